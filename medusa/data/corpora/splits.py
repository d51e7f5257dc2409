"""Speaker-disjoint splits that hold every class: a seeded search over assignments of whole speakers.

prepare derives splits in two places (medusa.data.corpora.manifest._assign_splits): a CSV's rows without a split
become train/dev/test, and a training pool with no test rows (the MSP-Podcast layout) gives up a test cut. One
StratifiedGroupKFold draw did both jobs badly where speakers speak few emotions: on a real corpus whose speakers
mostly speak one emotion each, its dev held 48 Angry + 4 Happy and no Sad or Neutral, though assignments with all
four classes in every split existed. So the split is a search: `draws` seeded candidates from two generators,
    stratified_group_kfold  scikit-learn's StratifiedGroupKFold, held-out splits cut one after the other (the
                            old rule for a CSV's rows without a split: there, draw 0 is exactly the split
                            prepare made before the search, which the search can only improve on);
    class_greedy            whole speakers placed one at a time: first one speaker of each class into every
                            split (rarest class first), then the rest where they bring the split closest to its
                            target size and class counts (StratifiedGroupKFold alone rarely covers a class that
                            only a few speakers speak);
each scored lexicographically:
    1. (split, class) cells without an utterance in train: a class missing from train leaves the run;
    2. cells without an utterance in any split;
    3. distance: per split, the total-variation distance between its class shares and those of all the rows
       split, plus its size share's deviation from its target fraction relative to that fraction; summed.
The best score wins, the earlier draw on a tie, so the result depends only on the rows, the seed and the draws
(a perfect score, which no later draw could beat, ends the search early). Where no draw holds every class in every
split and the speakers are few (n_splits ** speakers <= EXHAUSTIVE: 11 speakers for train/dev/test, 17 for a
train/test cut), every assignment is scored (generator "exhaustive"): a small corpus gets a covering assignment
whenever one exists, and otherwise the proof that none does, with the largest set of classes that one can hold.
A class spoken by fewer speakers than there are splits to hold it cannot be in every split: that stops prepare
(CorpusError naming the class, its speakers and the ways out), as does a search that finds no covering
assignment, unless prepare.allow_uncovered_classes keeps the best one with a warning. Messages name the user's
settings (prepare.dev_fraction, prepare.test_fraction, prepare.classes, ...), never a share derived from them.
classes_without_train names a class that labels rows but no train row once the splits are set (given splits can
do that): which speakers hold it, and why no seed can help.
The "speakers" prepare hands to the search are split units (split_units): a speaker joined, through the groups its
rows carry (an MSP-Podcast podcast with unidentified voices, a CSV's `group` column), with every speaker sharing
them; without groups a unit is its speaker, and the search sees what it saw before groups existed.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from medusa.data.corpora.msp_podcast import UNKNOWN_SPEAKER, CorpusError
from medusa.labels import CODES, EMOTION_OF

log = logging.getLogger(__name__)
#: StratifiedGroupKFold evaluates a fold-count of standard deviations per speaker (~0.6 s a cut at 1,500
#: speakers, 30x a greedy draw) and seldom wins: it takes at most SGKF_DRAWS even draws (0, 2, ...), fewer where
#: speakers x its draws would pass SGKF_BUDGET (2 at 1,500 speakers, none above 3,000); the greedy one the rest.
SGKF_DRAWS, SGKF_BUDGET = 8, 3_000
#: At most this many assignments (n_splits ** speakers) are scored one by one where the draws found no covering
#: one (~0.3 s at 3 ** 11 on one core); CHUNK of them at a time.
EXHAUSTIVE, CHUNK = 200_000, 20_000


@dataclass
class SplitSearch:
    """The winning assignment (a split name per row) and how it was found (JSON-ready: see `record`)."""
    splits: np.ndarray
    record: dict = field(default_factory=dict)


def search_splits(labels, speakers: pd.Series, fractions: dict[str, float], seed: int, draws: int,
                  classes: str | list[str], allow_uncovered: bool = False, what: str = "the rows"
                  ) -> SplitSearch:
    """Assign whole speakers to the splits of `fractions` ({split: target share}; "train" first, the others
    held out), searching `draws` seeded candidates for one that holds every class in every split (module
    docstring). `labels`: a label per row (codes; O, X, "" and None are no class); `classes`: prepare.classes
    ("auto": every code among the labels). `what` names the rows in messages."""
    names = list(fractions)
    if names[0] != "train":
        raise ValueError(f"fractions must start with train, got {names}")
    labels = pd.Series(labels, dtype=object).fillna("").astype(str).to_numpy()
    group_names, gid = np.unique(_speaker_groups(pd.Series(speakers).reset_index(drop=True)), return_inverse=True)
    cover = tuple(c for c in CODES if c in set(labels) and (classes == "auto" or c in classes))
    frac = np.array([fractions[s] for s in names], dtype=float)
    if len(group_names) < len(names):
        raise CorpusError(f"{what}: {len(group_names)} speaker(s) cannot fill {len(names)} speaker-disjoint splits "
                          f"({', '.join(names)}), whatever {_settings(names, frac)}: give a `split` column "
                          "(CSV manifest) that says which rows are train, dev and test")
    problem = _Problem(labels, gid, len(group_names), cover, frac)

    short = [k for k in range(len(cover)) if problem.speakers_of[k] < len(names)]
    if short and not allow_uncovered:
        raise CorpusError(_impossible_message(problem, short, group_names, names, what))

    n_sgkf = min(math.ceil(draws / 2), SGKF_DRAWS, SGKF_BUDGET // len(group_names))
    best, best_key, best_info, checked = None, None, None, None
    for i in range(draws):
        assignment, generator = None, "class_greedy"
        if i % 2 == 0 and i // 2 < n_sgkf:
            assignment, generator = _sgkf_candidate(labels, gid, problem.n_groups, frac, seed + i), \
                "stratified_group_kfold"
        if assignment is None:  # too few speakers for StratifiedGroupKFold's folds, or past its budget
            assignment, generator = _greedy_candidate(problem, np.random.default_rng(seed + i)), "class_greedy"
        key = problem.score(assignment)
        if best_key is None or key < best_key:
            best, best_key, best_info = assignment, key, (i, generator)
        if best_key == (0, 0, 0.0):
            break  # every class everywhere, shares and sizes exact: no later draw can win a tie
    tried = i + 1

    if best_key[1] and len(names) ** problem.n_groups <= EXHAUSTIVE:
        # A few speakers: score every assignment, so that a covering one is found wherever one exists (the draws
        # can miss it), and its absence is a proof, not a failure to search.
        checked = _exhaustive(problem)
        if checked.key < best_key:
            best, best_key, best_info = checked.assignment, checked.key, (None, "exhaustive")

    empty = problem.empty_cells(best)
    uncovered = [f"{names[s]} lacks {cover[k]}" for s, k in empty]
    record = {"splits": names, "classes": list(cover), "fractions": {s: float(f) for s, f in zip(names, frac)},
              "speakers": int(problem.n_groups), "rows": int(len(labels)), "draws": int(draws), "tried": tried,
              "best_draw": None if best_info[0] is None else int(best_info[0]), "generator": best_info[1],
              "seed": None if best_info[0] is None else int(seed + best_info[0]),
              "empty_cells": int(best_key[1]), "distance": round(float(best_key[2]), 6),
              "uncovered": uncovered}
    if checked is not None:
        record["exhaustive"] = int(checked.assignments)
    if uncovered:
        if not allow_uncovered:
            if checked is not None:
                raise CorpusError(_proven_message(problem, checked, names, frac, group_names, what))
            raise CorpusError(_not_found_message(problem, empty, names, frac, draws, what))
        log.warning("%s: no split assignment holds every class in every split (%s; best of %s); kept as "
                    "prepare.allow_uncovered_classes asks", what, "; ".join(uncovered),
                    f"all {checked.assignments:,} assignments" if checked is not None
                    else f"{draws} draws, prepare.split_draws")
    return SplitSearch(np.asarray(names, dtype=object)[best[gid]], record)


class _Problem:
    """The speakers as the search sees them: per speaker, its utterances of each class to cover and in all."""

    def __init__(self, labels: np.ndarray, gid: np.ndarray, n_groups: int, cover: tuple[str, ...],
                 frac: np.ndarray):
        self.cover, self.frac, self.n_groups = cover, frac, n_groups
        k = len(cover)
        code = pd.Index(list(cover), dtype=object).get_indexer(labels)   # -1: no class to cover
        has = code >= 0
        self.counts = np.bincount(gid[has] * k + code[has], minlength=n_groups * k).reshape(n_groups, k) \
            .astype(float)
        self.sizes = np.bincount(gid, minlength=n_groups).astype(float)
        self.speakers_of = (self.counts > 0).sum(axis=0)
        total = self.counts.sum(axis=0)
        self.shares = total / total.sum() if total.sum() else total
        self.target_counts = frac[:, None] * total[None, :]
        self.target_sizes = frac * self.sizes.sum()

    def split_counts(self, a: np.ndarray) -> np.ndarray:
        return np.stack([self.counts[a == s].sum(axis=0) for s in range(len(self.frac))])

    def empty_cells(self, a: np.ndarray) -> list[tuple[int, int]]:
        return [tuple(c) for c in np.argwhere(self.split_counts(a) == 0)]

    def score(self, a: np.ndarray) -> tuple[int, int, float]:
        m = self.split_counts(a)
        empty = m == 0
        rows = m.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            tv = np.where(rows > 0, 0.5 * np.abs(m / rows[:, None] - self.shares).sum(axis=1), 1.0)
        if not self.cover:
            tv = np.zeros(len(self.frac))  # nothing to stratify: sizes alone
        share = np.bincount(a, weights=self.sizes, minlength=len(self.frac)) / self.sizes.sum()
        distance = float((tv + np.abs(share - self.frac) / self.frac).sum())
        # rounded, so that float noise between equal assignments cannot outrank the earlier draw
        return int(empty[0].sum()), int(empty.sum()), round(distance, 9)


def _greedy_candidate(p: _Problem, rng: np.random.Generator) -> np.ndarray:
    """Split index per speaker: one speaker of each class into every split first (rarest class first; held-out
    splits pick among the speakers that fit their remaining room, train first where a class is short of
    speakers), then the rest in jittered largest-first order, each where it brings the split's class counts
    and size closest to their targets; single-utterance speakers last, apportioned per label in bulk."""
    n_splits, k = len(p.frac), len(p.cover)
    a = np.full(p.n_groups, -1)
    # per split: its class counts and its size, minus their targets (one array: one update per speaker)
    over = -np.hstack([p.target_counts, p.target_sizes[:, None]])
    load = np.hstack([p.counts, p.sizes[:, None]])
    has = p.counts > 0

    def place(g: int, s: int) -> None:
        a[g] = s
        over[s] += load[g]

    by_size = np.argsort(p.frac, kind="stable")  # smallest split first: it has the least room
    for c in np.lexsort((rng.random(k), p.speakers_of)):
        order = by_size if p.speakers_of[c] >= n_splits else [0, *[s for s in by_size[::-1] if s != 0]]
        for s in order:
            if over[s, c] + p.target_counts[s, c] > 0:
                continue  # an earlier pick already brought the class here
            free = np.flatnonzero(has[:, c] & (a < 0))
            if not len(free):
                break
            fits = free[p.sizes[free] <= max(-over[s, k], 0)]
            place(int(rng.choice(fits) if len(fits) else free[np.argmin(p.sizes[free])]), int(s))

    rest = np.flatnonzero(a < 0)
    many = rest[p.sizes[rest] > 1]
    many = many[np.argsort(-p.sizes[many] * rng.lognormal(0.0, 0.5, len(many)), kind="stable")]
    for g in many:
        place(int(g), int(np.argmin((np.abs(over + load[g]) - np.abs(over)).sum(axis=1))))

    # Speakers of one utterance are interchangeable within a label: share them out by what each split lacks.
    single = rng.permutation(rest[p.sizes[rest] == 1])
    label = np.where(has[single].any(axis=1), has[single].argmax(axis=1), k) if k else np.full(len(single), k)
    for c in range(k + 1):
        mine = single[label == c]
        if not len(mine):
            continue
        lack = np.maximum(-over[:, c], 0)  # c == k: the sizes' column
        take = _apportion(min(len(mine), int(round(lack.sum()))), lack)
        take += _apportion(len(mine) - take.sum(), p.frac)
        for s, chunk in enumerate(np.split(mine, np.cumsum(take)[:-1])):
            a[chunk] = s  # in bulk: a corpus of unknown speakers has as many of them as rows
            over[s] += load[chunk].sum(axis=0)
    return a


def _apportion(n: int, weights: np.ndarray) -> np.ndarray:
    """n items shared in proportion to weights, largest remainders first (integers summing to n)."""
    out = np.zeros(len(weights), dtype=int)
    if n <= 0 or weights.sum() <= 0:
        if n > 0:
            out[0] = n
        return out
    exact = n * weights / weights.sum()
    out = np.floor(exact).astype(int)
    out[np.argsort(-(exact - out), kind="stable")[: n - out.sum()]] += 1
    return out


def _sgkf_candidate(labels: np.ndarray, gid: np.ndarray, n_groups: int, frac: np.ndarray, seed: int
                    ) -> np.ndarray | None:
    """Split index per speaker from StratifiedGroupKFold folds: the held-out splits cut in reverse order (test,
    then dev from the rest), each one fold of round(1 / its share of what is left), seeds seed, seed + 1, ...
    (the derivation prepare used before the search). None where there are too few speakers for the folds."""
    a = np.zeros(n_groups, dtype=int)
    rows = np.arange(len(labels))
    left = 1.0
    for j, s in enumerate(range(len(frac) - 1, 0, -1)):
        if _fold_problem(labels[rows], gid[rows], _fold_count(frac[s] / left)):
            return None  # what StratifiedGroupKFold needs is not there: the greedy generator takes this draw
        held = _one_fold(labels[rows], gid[rows], frac[s] / left, seed + j, "")
        a[np.unique(gid[rows[held]])] = s
        rows = rows[np.isin(gid[rows], np.flatnonzero(a == 0))]
        left -= frac[s]
    return a


def _fold_count(fraction: float) -> int:
    """StratifiedGroupKFold's fold count for a held-out share: round(1 / fraction), at least 2."""
    return max(2, round(1 / fraction))


def _fold_problem(labels: np.ndarray, groups: np.ndarray, k: int) -> str:
    """What StratifiedGroupKFold(n_splits=k) needs and these rows lack ('' if nothing): it raises a ValueError
    where there are fewer speakers or rows than folds, or where every label has fewer rows than folds."""
    n_groups = len(set(groups))
    per_label = pd.Series(labels).value_counts()
    if n_groups < k:
        return f"only {n_groups} speakers"
    if len(labels) < k or not len(per_label) or per_label.max() < k:
        return f"no label with {k} rows (the most: {int(per_label.max()) if len(per_label) else 0})"
    return ""


def _one_fold(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int, key: str,
              given: float | None = None) -> np.ndarray:
    """Row indices of one StratifiedGroupKFold fold of round(1 / fraction) (at least 2). Where the rows cannot
    give such folds, a CorpusError names prepare.`key` at the value the user gave (`given`; default `fraction`)."""
    from sklearn.model_selection import StratifiedGroupKFold

    k = _fold_count(fraction)
    problem = _fold_problem(labels, groups, k)
    if problem:
        value = fraction if given is None else given
        raise CorpusError(f"prepare.{key} {value:g}: a speaker-disjoint, class-stratified cut of that share takes "
                          f"{k} folds of whole speakers, and these {len(labels)} rows have {problem} (give a larger "
                          f"prepare.{key}, or a `split` column)")
    with warnings.catch_warnings():  # "the least populated class has fewer members than n_splits": expected
        warnings.simplefilter("ignore", UserWarning)
        folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        _, held_out = next(folds.split(np.zeros(len(labels)), labels, groups))
    return held_out


def split_units(speakers: pd.Series, groups: pd.Series | None = None) -> pd.Series:
    """The unit the searches place whole, per row: connected groups of speakers and groups (union-find). A row
    joins its speaker and its group (None or "": no group); speakers and groups that share a row, directly or
    through others, are one unit (speaker s1 and group g share a row, g and speaker s2 another: s1, g and s2 land
    in one split). Why a group: the rows of one podcast whose voices the corpus did not identify, or any rows a
    CSV's `group` column says belong together (a session, a recording) -- keeping the speakers apart alone would
    let one voice be in train and in test. A unit without a group keeps its speaker's name, so a corpus without
    groups splits exactly as before; a unit with groups is named after its first group (sorted; `group <k>:
    <name>` where that name is also a lone speaker's). `speakers`: a key per row, an unknown speaker already made
    unique (manifest._split_units: a speaker of its own per audio file)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    speakers = pd.Series(speakers).astype(str).reset_index(drop=True)
    spk_code, spk_names = pd.factorize(speakers)
    if groups is None:
        return pd.Series(speakers.to_numpy(), name="unit")
    groups = pd.Series(groups, dtype=object).reset_index(drop=True)
    has = groups.notna().to_numpy() & (groups.fillna("").astype(str).str.strip() != "").to_numpy()
    if not has.any():
        return pd.Series(speakers.to_numpy(), name="unit")
    grp_code, grp_names = pd.factorize(groups[has].astype(str))
    n_spk, n = len(spk_names), len(spk_names) + len(grp_names)
    # speaker nodes 0..n_spk-1, group nodes after them; one edge per grouped row
    edges = coo_matrix((np.ones(int(has.sum())), (spk_code[has], n_spk + grp_code)), shape=(n, n))
    _, component = connected_components(edges, directed=False)
    # a component's name: its first group (sorted), or, without a group, its only speaker
    grp_component = component[n_spk:]
    order = np.argsort(np.asarray(grp_names, dtype=str), kind="stable")
    first_group = {}
    for g in order:
        first_group.setdefault(int(grp_component[g]), str(grp_names[g]))
    lone = {str(spk_names[i]) for i in range(n_spk) if int(component[i]) not in first_group}
    names = {c: (f"group {c}: {g}" if g in lone else g) for c, g in first_group.items()}
    unit = np.array([names.get(int(c), str(spk)) for spk, c in zip(spk_names, component[:n_spk])], dtype=object)
    return pd.Series(unit[spk_code], name="unit")


def _speaker_groups(speakers: pd.Series) -> np.ndarray:
    """Speaker per row; an unknown speaker counts as a speaker of its own (it cannot be matched to anyone)."""
    s = speakers.astype(str)
    return s.where(s != UNKNOWN_SPEAKER, "unknown:" + s.index.astype(str)).to_numpy()


_WAYS_OUT = ("give those rows a `split` (CSV manifest); restrict prepare.classes to classes every split can hold"
             "{keep}; or set prepare.allow_uncovered_classes: true to keep the best assignment with the class "
             "missing from a split")


def _speaker_list(p: _Problem, c: int, group_names: np.ndarray, first: int = 5) -> str:
    speakers = np.flatnonzero(p.counts[:, c] > 0)
    speakers = speakers[np.argsort(-p.counts[speakers, c], kind="stable")]
    listed = ", ".join(f"{group_names[g]}: {int(p.counts[g, c])}" for g in speakers[:first])
    return listed + (f", ... ({len(speakers) - first} more)" if len(speakers) > first else "")


def _keep(p: _Problem, n_splits: int) -> str:
    enough = [c for c, n in zip(p.cover, p.speakers_of) if n >= n_splits]
    return f" (here: [{', '.join(enough)}])" if enough and len(enough) < len(p.cover) else ""


def _impossible_message(p: _Problem, short: list[int], group_names: np.ndarray, names: list[str], what: str) -> str:
    lines = [f"class {p.cover[c]} ({EMOTION_OF[p.cover[c]]}) is spoken by {p.speakers_of[c]} speaker(s) "
             f"({_speaker_list(p, c, group_names)} utterances)" for c in short]
    return (f"{what}: {'; '.join(lines)}, but the {len(names)} speaker-disjoint splits {', '.join(names)} must "
            f"each hold every class: no assignment can. Ways out: "
            + _WAYS_OUT.format(keep=_keep(p, len(names))))


def _settings(names: list[str], frac: np.ndarray) -> str:
    """The fractions as the user set them: 'prepare.dev_fraction 0.1, prepare.test_fraction 0.3' (train's share
    is what they leave)."""
    return ", ".join(f"prepare.{s}_fraction {f:g}" for s, f in zip(names[1:], frac[1:]))


def _not_found_message(p: _Problem, empty: list[tuple[int, int]], names: list[str], frac: np.ndarray, draws: int,
                       what: str) -> str:
    cells = "; ".join(f"{names[s]} lacks {p.cover[c]} ({EMOTION_OF[p.cover[c]]}, {p.speakers_of[c]} speakers)"
                      for s, c in empty)
    return (f"{what}: no assignment of the {p.n_groups} speakers to {', '.join(names)} holding every class in "
            f"every split was found after {draws} draws at {_settings(names, frac)} (best: {cells}). Ways out: "
            "raise prepare.split_draws; change prepare.seed or the fractions; "
            + _WAYS_OUT.format(keep=_keep(p, len(names))))


def _proven_message(p: _Problem, checked: "_Checked", names: list[str], frac: np.ndarray, group_names: np.ndarray,
                    what: str) -> str:
    """Every assignment was scored and none holds every class in every split: say so, and which classes can."""
    held = [p.cover[c] for c in range(len(p.cover)) if checked.most_classes >> c & 1]
    out = [c for c in p.cover if c not in held]
    who = "; ".join(f"{c} ({EMOTION_OF[c]}): {_speaker_list(p, p.cover.index(c), group_names)} utterances"
                    for c in out)
    keep = (f"restrict prepare.classes to [{', '.join(held)}], the most classes one assignment holds in every "
            f"split (the others' rows are kept, not scored)") if held else "restrict prepare.classes"
    return (f"{what}: no assignment of the {p.n_groups} speakers to {', '.join(names)} holds every class in every "
            f"split: all {checked.assignments:,} were checked, so no prepare.seed, prepare.split_draws or other "
            f"fractions than {_settings(names, frac)} can help (the speakers of {who} overlap too much). Ways out: "
            f"{keep}; give those rows a `split` (CSV manifest); or set prepare.allow_uncovered_classes: true to keep "
            "the best assignment with a class missing from a split")


@dataclass
class _Checked:
    """The exhaustive search's result: the best assignment and its score, how many were scored, and the largest
    set of classes some assignment holds in every split (a bit per class of the cover)."""
    assignment: np.ndarray
    key: tuple[int, int, float]
    assignments: int
    most_classes: int


def _exhaustive(p: _Problem) -> _Checked:
    """Score every assignment of the speakers to the splits (n_splits ** speakers of them, in chunks) with
    _Problem.score's key; the first best in enumeration order wins. Records the largest class set held in every
    split by one assignment (most classes, then most utterances)."""
    n_splits, g, k = len(p.frac), p.n_groups, len(p.cover)
    total = n_splits ** g
    place = n_splits ** np.arange(g)[::-1]  # speaker 0 the most significant digit: lexicographic order
    total_size = p.sizes.sum()
    best, best_key = None, None
    most, most_score = 0, (-1, -1.0)
    class_rows = p.counts.sum(axis=0)
    for start in range(0, total, CHUNK):
        idx = np.arange(start, min(start + CHUNK, total))
        a = (idx[:, None] // place[None, :]) % n_splits                                    # (m, speakers)
        member = (a[:, None, :] == np.arange(n_splits)[None, :, None]).reshape(-1, g).astype(float)
        m = (member @ p.counts).reshape(len(idx), n_splits, k)                             # (m, splits, classes)
        sizes = (member @ p.sizes).reshape(len(idx), n_splits)                             # (m, splits)
        empty = m == 0
        rows = m.sum(axis=2)
        if k:
            with np.errstate(invalid="ignore", divide="ignore"):
                tv = np.where(rows > 0, 0.5 * np.abs(m / rows[:, :, None] - p.shares).sum(axis=2), 1.0)
        else:
            tv = np.zeros_like(rows)
        distance = np.round((tv + np.abs(sizes / total_size - p.frac) / p.frac).sum(axis=1), 9)
        e_train, e_all = empty[:, 0, :].sum(axis=1), empty.sum(axis=(1, 2))
        first = np.flatnonzero(e_train == e_train.min())  # the key's order without a full lexsort
        first = first[e_all[first] == e_all[first].min()]
        j = first[np.argmin(distance[first])]
        key = (int(e_train[j]), int(e_all[j]), float(distance[j]))
        if best_key is None or key < best_key:
            best, best_key = a[j].copy(), key
        held = (~empty).all(axis=1)                                                        # (m, classes)
        n_held = held.sum(axis=1)
        weight = held @ class_rows
        most_held = np.flatnonzero(n_held == n_held.max())
        j = most_held[np.argmax(weight[most_held])]
        if (int(n_held[j]), float(weight[j])) > most_score:
            most_score, most = (int(n_held[j]), float(weight[j])), int((held[j] * (1 << np.arange(k))).sum())
    return _Checked(best, best_key, total, most)


def stratified_speaker_split(labels: np.ndarray, speakers: pd.Series, dev_fraction: float, test_fraction: float,
                             seed: int, draws: int, classes: str | list[str],
                             allow_uncovered: bool = False) -> np.ndarray:
    """train/dev/test per row: whole speakers, every class in every split, class shares and sizes near the
    fractions (search_splits)."""
    fractions = {"train": 1 - dev_fraction - test_fraction, "dev": dev_fraction, "test": test_fraction}
    return search_splits(labels, speakers, fractions, seed, draws, classes, allow_uncovered).splits


def speaker_disjoint_cut(speakers: pd.Series, fraction: float, seed: int, labels, draws: int,
                         classes: str | list[str], allow_uncovered: bool = False) -> np.ndarray:
    """Boolean mask of a held-out cut of about `fraction` of the rows, whole speakers at a time, holding every
    class of `labels` (if given) on both sides (search_splits)."""
    labels = np.full(len(speakers), "", dtype=object) if labels is None else labels
    found = search_splits(labels, speakers, {"train": 1 - fraction, "test": fraction}, seed, draws, classes,
                          allow_uncovered)
    return found.splits == "test"


def class_table(manifest: pd.DataFrame, classes: tuple[str, ...]) -> pd.DataFrame:
    """Utterances and shares of each run class per labelled split, and over the three together ("all"):
    columns (utterances | share, class), rows train, dev, test, all."""
    labelled = manifest[manifest["split"].isin(["train", "dev", "test"]) & manifest["label"].isin(classes)]
    counts = pd.crosstab(labelled["split"], labelled["label"]).reindex(
        index=[s for s in ("train", "dev", "test") if s in set(manifest["split"])], columns=list(classes),
        fill_value=0)
    counts.loc["all"] = counts.sum()
    shares = counts.div(counts.sum(axis=1).where(lambda n: n > 0), axis=0).round(3)
    table = pd.concat({"utterances": counts, "share": shares}, axis=1)
    return table.rename_axis(index="split", columns=[None, "class"])


def classes_without_train(labels, speakers, splits, what: str, classes: str | list[str], given=None) -> str:
    """'' where every class code that labels a train, dev or test row (of `classes`: "auto" for all) labels a
    train row; else one line for the user, naming each class without a train row, the speakers that hold it
    (and where each is), why no seed can help (it has a single speaker, whose rows stay in one split, or every
    speaker of it is in dev or test by a given split; where some splits were derived, it says so) and the ways
    out: leave the class out with prepare.classes, or a `split` column that puts one of its speakers in train.
    `given`: a boolean per row, True where the split was given rather than derived (None: all given). A class
    without training rows cannot be learnt: the caller stops (or warns where prepare.allow_uncovered_classes
    asks)."""
    table = pd.DataFrame({"label": pd.Series(labels, dtype=object).to_numpy(),
                          "speaker": pd.Series(speakers).astype(str).to_numpy(),
                          "split": pd.Series(splits, dtype=object).astype(str).to_numpy(),
                          "given": True if given is None else np.asarray(given, dtype=bool)})
    table = table[table["split"].isin(["train", "dev", "test"]) & table["label"].isin(CODES)]
    if classes != "auto":
        table = table[table["label"].isin(classes)]
    trained = set(table.loc[table["split"] == "train", "label"])
    missing = [c for c in CODES if c in set(table["label"]) and c not in trained]
    if not missing:
        return ""
    parts = []
    for code in missing:
        rows = table[table["label"] == code]
        held = rows.groupby("speaker", sort=False).agg(split=("split", "first"), rows=("split", "size"),
                                                       given=("given", "all"))
        held = held.sort_values("rows", ascending=False, kind="stable")
        listed = ", ".join(f"{s} in {r.split} ({r.rows} rows)" for s, r in held.head(5).iterrows())
        if len(held) > 5:
            listed += f", ... ({len(held) - 5} more)"
        if len(held) == 1:
            why = (f"its only speaker, {listed}, is not in train: a speaker's rows stay in one split, so no "
                   "prepare.seed or prepare.split_draws can put it in train and in dev or test")
        elif held["given"].all():
            why = (f"all {len(held)} of its speakers are in dev or test ({listed}) by their given split, so no "
                   "prepare.seed or prepare.split_draws can bring it into train")
        else:
            why = (f"all {len(held)} of its speakers are in dev or test ({listed}), some by their given split")
        parts.append(f"class {code} ({EMOTION_OF[code]}, {len(rows)} rows) has no train row: {why}")
    keep = [c for c in CODES if c in trained]
    return (f"{what}: {'; '.join(parts)}. A class without training rows cannot be learnt. Ways out: leave it out "
            f"with prepare.classes: [{', '.join(keep)}] (its rows are kept, not scored); or give a `split` column "
            "that puts one of its speakers in train")

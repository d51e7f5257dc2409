"""One ensemble subset end to end (voting, stage 3 per seed, the soup, probes), and the subsets a run scores."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from medusa.ensemble.meta import MetaClassifier, MetaConfig, meta_predict, soup, soup_runs
from medusa.ensemble.stage3 import Stage3Choice, choose_stage3
from medusa.ensemble.voting import Stacked, majority_vote, posteriors_frame, soft_vote, stack
from medusa.labels import ATTRIBUTES, CODES, target_columns
from medusa.scoring.metrics import balanced_macro_f1, run_classes

log = logging.getLogger(__name__)


def top_k_names(scores: dict[str, float], k: int) -> list[str]:
    """The k members with the highest held-out score (ties: params order)."""
    order = sorted(scores, key=lambda name: -scores[name])  # stable: equal scores keep their order
    return order[:k]



def assert_no_leakage(manifest: pd.DataFrame, meta_utt_ids: np.ndarray, meta_split: str = "dev") -> None:
    """The meta-classifier's training utterances must all be in `meta_split` and none in train or test."""
    split_of = manifest.set_index("utt_id")["split"]
    splits = split_of.reindex(meta_utt_ids)
    bad = splits[splits != meta_split]
    if len(bad):
        raise AssertionError(f"{len(bad)} meta-classifier training utterances are not in {meta_split!r} "
                             f"(e.g. {bad.index[0]} in {bad.iloc[0]!r})")



@dataclass
class SubsetResult:
    """One subset of members on test: each technique's predicted class indices, the soup, the seeds' runs."""
    members: list[str]
    predictions: dict[str, np.ndarray]        # technique -> (N,) class indices on test ("single" = seed 0)
    single_runs: list[np.ndarray]             # per seed, (N,) class indices
    soup: MetaClassifier
    runs: list[MetaClassifier]
    test: Stacked
    meta_train_utt_ids: np.ndarray            # the utterances the meta-classifiers trained on (dev)
    classes: tuple[str, ...] = field(default=CODES)   # the run's classes: what technique_table scores
    other_soup: MetaClassifier | None = None  # the soup with the other setting of include_probes (probes read)
    probe_dev_scores: dict[str, float] = field(default_factory=dict)  # member -> its probe's dev balanced macro-F1
    best_probe: str | None = None             # the member whose probe has the best dev score (probes read)
    stage3: Stage3Choice | None = None        # the form the soup was trained as, on what, and why
    other_form_soup: MetaClassifier | None = None   # the soup of the other stage-3 form (paper <-> anchored)



#: Table 3's row for the soup trained with the other setting of `include_probes`, keyed by the main soup's setting.
OTHER_PROBES_SOUP = {False: "meta-classifier soup + probes", True: "meta-classifier soup without probes"}



#: Table 3's row for the soup trained in the other stage-3 form, keyed by that form.
OTHER_FORM_SOUP = {"paper": "paper's meta-classifier soup", "anchored": "voting-anchored meta-classifier soup"}



#: Table 3's row for the probe of the subset's member whose probe scores best on dev.
BEST_PROBE = "best probe"



def probe_dev_scores(dev: Stacked, members: list[str], classes: tuple[str, ...]) -> dict[str, float]:
    """Each member's probe's balanced macro-F1 on dev (over `classes`): the score the best probe is chosen by."""
    return {m: balanced_macro_f1(dev.labels, np.asarray(dev.classes)[dev.probe_probs[:, i].argmax(1)], classes)
            for i, m in enumerate(members)}



def run_subset(posteriors: dict[str, pd.DataFrame], manifest: pd.DataFrame, members: list[str], cfg: MetaConfig,
               seeds: list[int], probes: dict[str, pd.DataFrame] | None = None,
               *, anchor_grid: list[float] | tuple[float, ...], cv_folds: int) -> SubsetResult:
    """Stages 3-4 for one subset: meta-classifiers trained on dev with each seed, their soup, and the voting
    baselines, all predicting test. With `probes` ({member: its probe's posteriors}; required when
    cfg.include_probes), also the soup trained exactly alike (same seeds) with the other setting of
    include_probes, and the best probe by dev balanced macro-F1 (Table 3's OTHER_PROBES_SOUP and BEST_PROBE). cfg.stage3 "anchored" picks its penalty among
    `anchor_grid` (or soft voting) by `cv_folds`-fold cross-validation within dev (choose_stage3); the soup of the
    other form (paper or anchored) is trained alike and scored as Table 3's OTHER_FORM_SOUP row."""
    if cfg.include_probes and probes is None:
        raise ValueError("include_probes: the meta-classifier reads the members' probe posteriors; pass them "
                         "(read_probe_posteriors)")
    chosen = {m: posteriors[m] for m in members}
    chosen_probes = None if probes is None else {m: probes[m] for m in members}
    dev, test = stack(chosen, "dev", chosen_probes), stack(chosen, "test", chosen_probes)
    assert_no_leakage(manifest, dev.utt_ids)
    classes = run_classes(manifest)
    if dev.classes != classes:
        raise ValueError(f"the members' posteriors are over the classes {' '.join(dev.classes)}, the manifest's run "
                         f"over {' '.join(classes)}: retrain the members on this manifest")
    truth = manifest.set_index("utt_id").loc[dev.utt_ids]
    targets = truth[list(target_columns(classes))].to_numpy(np.float32)
    attributes = truth[list(ATTRIBUTES)].to_numpy(np.float32)
    cfg = replace(cfg, n_models=len(members), classes=classes)
    if not np.isfinite(attributes).any():  # a corpus without ratings: nothing would train attribute outputs
        if cfg.attributes_in:
            raise ValueError("ensemble.attributes_in: no dev utterance has attribute ratings, so the members' "
                             "attribute predictions are empty; set ensemble.attributes_in: false")
        cfg = replace(cfg, attributes_out=False)

    def seeded_runs(c: MetaConfig) -> tuple[list[MetaClassifier], Stage3Choice]:
        """The form (cross-validated for "anchored", with the first seed), then one run per seed on all of dev."""
        c, choice = choose_stage3(dev, targets, attributes, replace(c, seed=seeds[0]),
                                  anchor_grid, cv_folds)
        return soup_runs(dev, targets, attributes, c, seeds), choice

    runs, choice = seeded_runs(cfg)
    if choice.warning:
        log.warning("%s: %s", ", ".join(members), choice.warning)
    mixed = soup(runs)
    single_runs = [meta_predict(r, test)[0].argmax(1) for r in runs]
    predictions = {"majority voting": majority_vote(test.probs), "soft voting": soft_vote(test.probs),
                   "meta-classifier (single)": single_runs[0],
                   "meta-classifier (soup)": meta_predict(mixed, test)[0].argmax(1)}
    # the same dev rows, targets and seeds in the other form: Table 3 measures the paper's stage 3 against the
    # voting-anchored one on every run, whichever the param chose
    other_form = "paper" if cfg.stage3 == "anchored" else "anchored"
    other_form_soup = soup(seeded_runs(replace(cfg, stage3=other_form))[0])
    predictions[OTHER_FORM_SOUP[other_form]] = meta_predict(other_form_soup, test)[0].argmax(1)
    other, scores, best = None, {}, None
    if probes is not None:
        # the same dev rows, targets and seeds: the two soups differ by the probe inputs alone
        other = soup(seeded_runs(replace(cfg, include_probes=not cfg.include_probes))[0])
        predictions[OTHER_PROBES_SOUP[cfg.include_probes]] = meta_predict(other, test)[0].argmax(1)
        scores = probe_dev_scores(dev, list(members), classes)
        best = top_k_names(scores, 1)[0]
        predictions[BEST_PROBE] = test.probe_probs[:, list(members).index(best)].argmax(1)
    return SubsetResult(list(members), predictions, single_runs, mixed, runs, test, dev.utt_ids, classes, other,
                        scores, best, choice, other_form_soup)



def member_table(names: list[str], models_root) -> pd.DataFrame:
    """Each member's held-out scores from its metrics.json: dev balanced macro-F1 (its selection score, used
    to rank members for top-k) and test balanced macro-F1, macro-F1 and accuracy (reported, never used to choose)."""
    from medusa.model.members import read_metrics

    rows = []
    for name in names:
        m = read_metrics(Path(models_root) / name, f"train@{name}")
        rows.append({"member": name, "dev_balanced_macro_f1": m["dev_balanced_macro_f1"],
                     "test_balanced_macro_f1": m["test"]["balanced_macro_f1"],
                     "test_macro_f1": m["test"]["macro_f1"], "test_accuracy": m["test"]["accuracy"]})
    return pd.DataFrame(rows).set_index("member")



def subsets(members: pd.DataFrame, top_k: list[int]) -> dict[str, list[str]]:
    """{"all (M)": every member, "top-k": the k best by dev balanced macro-F1} (k = M is not repeated)."""
    names = list(members.index)
    out = {f"all ({len(names)})": names}
    for k in top_k:
        if k < len(names):
            out[f"top-{k}"] = top_k_names(members["dev_balanced_macro_f1"].to_dict(), k)
    return out



def ensemble_posteriors(posteriors: dict[str, pd.DataFrame], result: SubsetResult, splits=("test", "blind"),
                        probes: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """The soup's posteriors (utt_id, split, label, p_<code> of each of the run's classes and, with attributes,
    arousal..dominance; NaN without); `probes`
    (the members' probe posteriors) are needed when the soup reads them (include_probes)."""
    frames = []
    chosen = {m: posteriors[m] for m in result.members}
    chosen_probes = None if probes is None else {m: probes[m] for m in result.members}
    for split in splits:
        if not any((f["split"] == split).any() for f in chosen.values()):
            continue
        s = stack(chosen, split, chosen_probes)
        probs, attrs = meta_predict(result.soup, s)
        frame = posteriors_frame(s, split, probs)
        frame[list(ATTRIBUTES)] = attrs if attrs is not None else np.nan
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


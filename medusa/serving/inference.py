"""A loaded predict bundle: load_bundle verifies and loads a bundle (medusa.serving.bundle, its format), Bundle goes
from features to emotion probabilities, stored_agreement checks prediction against the pipeline's stored posteriors.

Audio goes through the same steps as in training: Whisper transcripts (if a member reads text) and each encoder's
features, made by medusa.serving.featurizer.Featurizer as the transcribe and extract stages made them (batches
planned as there, frames rounded to float16 as the feature stores hold them); then here, the same pooling and padding (medusa.model.dataset.batch_from_arrays), the
members' posteriors and attributes, with include_probes each member's linear probe on the mean of the same raw
(unpooled) frames, as it was fitted from the feature stores (medusa.model.linear_probe.pooled_means), then the
meta-classifier, whose inputs are assembled by the ensemble stage's own code (medusa.ensemble.meta.meta_inputs). A
clip's features and transcript depend on the clip alone (medusa.features.encoders.base), so several files in one
call, in any order, get the features the store would hold.

Versions: features depend on the libraries that compute them. `load_bundle` refuses a bundle whose encoders'
features were made with another major.minor version of transformers, openai-whisper or opensmile than the one
installed (and, for transcripts, another openai-whisper than the one that wrote the bundle), unless told to go on
(`allow_version_mismatch=True`, `medusa predict --allow-version-mismatch`).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from medusa.ensemble.meta import MetaClassifier, MetaConfig, Stacked, meta_predict
from medusa.errors import UserError
from medusa.features.encoders import kind_of
from medusa.labels import ATTRIBUTES, target_columns
from medusa.model.dataset import batch_from_arrays, unscale_attributes
from medusa.model.deepser import DeepSER
from medusa.model.linear_probe import PROBE_FILE, LinearProbe, pooled_means
from medusa.model.members import MODEL_FILES, load_member, member_classes
from medusa.model.training import autocast
from medusa.serving.bundle import (
    ASR_JSON_KEYS,
    ASR_REQUIRED,
    COPY_AGAIN,
    ENCODER_ENTRY_KEYS,
    ENCODER_ENTRY_REQUIRED,
    META_JSON_KEYS,
    META_JSON_REQUIRED,
    BundleError,
    check_classes,
    check_durations,
    check_keys,
    check_member_config,
    installed_version,
    load_tensors,
    major_minor,
    read_bundle_json,
    read_probe,
    verify_manifest,
)

log = logging.getLogger(__name__)

WHISPER_MAX_SECONDS = 30.0


class ClipError(UserError, ValueError):
    """A clip the bundle cannot score: its features or the bundle's outputs for it are not finite. The message
    names the clip; `medusa predict` gives its row this error and scores the other clips."""


@dataclass
class Member:
    name: str
    model: DeepSER
    config: dict[str, Any]
    probe: LinearProbe | None = None     # loaded when the meta-classifier reads the members' probes

    @property
    def encoders(self) -> list[str]:
        return list(self.config["encoders"])

    @property
    def pools(self) -> list[int]:
        return [int(p) for p in self.config["pools"]]

    @property
    def input_dims(self) -> list[int]:
        return [int(d) for d in self.config["deepser"]["input_dims"]]

    @property
    def classes(self) -> tuple[str, ...]:
        """The classes of its class outputs, in order (config.json)."""
        return member_classes(self.config)

    @property
    def amp(self) -> bool:
        # bf16 on CUDA as in training, so the meta-classifier sees posteriors like those it was trained on
        return bool(self.config.get("train", {}).get("amp", True))


@dataclass
class Bundle:
    path: Path
    meta: MetaClassifier                # kept on the CPU: it is tiny, and meta_predict feeds it CPU tensors
    members: list[Member]
    encoders: dict[str, dict[str, Any]]
    asr: dict[str, Any] | None
    manifest: dict[str, Any]
    device: torch.device
    batch_size: int = 32                # utterances per member forward pass
    train_durations: dict[str, float] | None = None  # meta.json's (medusa.serving.bundle.DURATION_KEYS), if recorded
    _dims: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for m in self.members:
            for key, dim in zip(m.encoders, m.input_dims):
                self._dims.setdefault(key, dim)

    @property
    def dims(self) -> dict[str, int]:
        """The width of each encoder key's frames, as the members read them."""
        return dict(self._dims)

    @property
    def member_names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def classes(self) -> tuple[str, ...]:
        """The run's classes (codes, CODES order): the columns p_<code> of every prediction, in that order."""
        return self.meta.cfg.classes

    @property
    def encoder_keys(self) -> list[str]:
        """Every encoder key a member reads, in first-use order."""
        return list(dict.fromkeys(k for m in self.members for k in m.encoders))

    @property
    def needs_asr(self) -> bool:
        return any(kind_of(self.encoders[k]["family"]) == "text" for k in self.encoder_keys)

    @property
    def whisper_keys(self) -> list[str]:
        """The encoder keys of Whisper encoders: they take clips of at most WHISPER_MAX_SECONDS."""
        return [k for k in self.encoder_keys if self.encoders[k]["family"] == "whisper"]

    @property
    def max_clip_seconds(self) -> float | None:
        """The longest clip the bundle scores (Whisper's window, when a Whisper encoder or the Whisper ASR reads
        the audio), or None when no part of it limits the length."""
        return WHISPER_MAX_SECONDS if self.whisper_keys or self.needs_asr else None

    # ---- features -> probabilities

    def _check_features(self, features: Mapping[str, list[np.ndarray]]) -> int:
        missing = [k for k in self.encoder_keys if k not in features]
        if missing:
            raise KeyError(f"no features for encoder(s) {', '.join(missing)} (the members read "
                           f"{', '.join(self.encoder_keys)})")
        counts = {k: len(features[k]) for k in self.encoder_keys}
        if len(set(counts.values())) > 1:
            raise ValueError(f"the encoders have features for different numbers of utterances: {counts}")
        for key in self.encoder_keys:
            for i, x in enumerate(features[key]):
                shape = np.shape(x)
                if len(shape) != 2 or shape[1] != self._dims[key] or shape[0] < 1:
                    raise ValueError(f"{key} features of utterance {i}: expected (T >= 1, {self._dims[key]}) "
                                     f"frames, got shape {shape}")
        return next(iter(counts.values()))

    @torch.no_grad()
    def _member_outputs(self, member: Member, features: Mapping[str, list[np.ndarray]], n: int
                        ) -> tuple[np.ndarray, np.ndarray]:
        """One member's class probabilities (n, C) and attributes (n, 3; 1..7 scale), in input order."""
        seqs = [features[k] for k in member.encoders]
        # length-sorted batches, as training.predict does: little padding (the masks make it harmless anyway)
        lengths = np.asarray([sum(-(-len(s[i]) // p) for s, p in zip(seqs, member.pools)) for i in range(n)])
        order = np.argsort(lengths, kind="stable")
        probs, attrs = np.zeros((n, len(member.classes)), np.float32), np.zeros((n, len(ATTRIBUTES)), np.float32)
        member.model.eval()
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            xs, masks = batch_from_arrays([[s[i] for i in idx] for s in seqs], member.pools, member.input_dims)
            with autocast(self.device, member.amp):
                logits, a = member.model([x.to(self.device) for x in xs], [m.to(self.device) for m in masks])
            probs[idx] = torch.softmax(logits.float(), -1).cpu().numpy()
            attrs[idx] = a.float().cpu().numpy()
        return probs, unscale_attributes(attrs)

    def predict_all(self, features: Mapping[str, list[np.ndarray]], names: list[str] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Ensemble class probabilities (N, C), the members' (N, M, C), and the ensemble's attributes (N, 3;
        1..7 scale) when its meta-classifier predicts them (else None); C = the bundle's classes, in order.
        Never a NaN or inf: ClipError naming the clips (`names`, default "utterance <i>") whose values are not
        finite."""
        n = self._check_features(features)
        m, c = len(self.members), len(self.classes)
        if n == 0:
            return np.zeros((0, c), np.float32), np.zeros((0, m, c), np.float32), None
        outputs = [self._member_outputs(member, features, n) for member in self.members]
        # each probe on the mean of the member's raw frames, per encoder in the member's order, as fitted
        probe_probs = (np.stack([m.probe.predict_proba(pooled_means([features[k] for k in m.encoders]))
                                 for m in self.members], 1) if self.meta.cfg.include_probes else None)
        stacked = Stacked(utt_ids=np.arange(n), probs=np.stack([p for p, _ in outputs], 1),
                          attributes=np.stack([a for _, a in outputs], 1), labels=np.full(n, None, dtype=object),
                          probe_probs=probe_probs, classes=self.classes)
        probs, attrs = meta_predict(self.meta, stacked)
        self._check_finite(names, probabilities=probs, attributes=attrs, member_probabilities=stacked.probs,
                           member_attributes=stacked.attributes, probe_probabilities=probe_probs)
        return probs, stacked.probs, attrs

    def _check_finite(self, names: list[str] | None, **outputs: np.ndarray | None) -> None:
        """ClipError naming every clip (row) of which one of `outputs` is NaN or inf: the weights are finite
        (load_bundle), so the clip's features took a model out of range; its row must say so, not hold a NaN."""
        bad: set[int] = set()
        kinds: dict[str, None] = {}
        for what, values in outputs.items():
            if values is None:
                continue
            rows = ~np.isfinite(np.asarray(values, dtype=np.float64)).reshape(len(values), -1).all(1)
            if rows.any():
                bad.update(int(i) for i in np.flatnonzero(rows))
                kinds[what.replace("_", " ")] = None
        if bad:
            label = [names[i] if names else f"utterance {i}" for i in sorted(bad)]
            shown = ", ".join(label[:5]) + (f" and {len(label) - 5} more" if len(label) > 5 else "")
            this = "this clip" if len(label) == 1 else "these clips"
            raise ClipError(f"{shown}: the bundle {self.path} gives values that are not finite (NaN or inf) for "
                            f"{this}, in its {', '.join(kinds)}: not scored (the clip's features are out of the "
                            "range the models handle; check the audio)")

    def predict_features(self, features: Mapping[str, list[np.ndarray]], names: list[str] | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
        """From frame sequences per encoder key ((T_i, dim) each, the same utterance order for every key):
        the ensemble's class probabilities (N, C) and the members' (N, M, C), over the bundle's classes in order
        (ClipError naming a clip, `names`, whose values are not finite)."""
        probs, member_probs, _ = self.predict_all(features, names)
        return probs, member_probs



def stored_agreement(bundle: Bundle, files: list[str | Path], stored: pd.DataFrame, cache_dir: str | Path = "work/cache"
                     ) -> dict[str, Any]:
    """Score `files` with the bundle as `medusa predict` does (medusa.serving.predict.Predictor) and compare with
    the pipeline's stored posteriors for the same clips (`stored`: utt_id = the file's stem, p_<code> of the
    bundle's classes), e.g. the ensemble stage's soup posteriors. Batch invariance makes them agree up to float
    noise; a gap means prediction and pipeline compute features differently."""
    from medusa.serving.predict import Predictor

    with Predictor(bundle, Path(cache_dir)) as predictor:
        frame = predictor.predict_files(list(files), predictor.utterance_window, progress=False)
    files_rows = frame[frame["level"] == "file"]
    errors = files_rows["error"].dropna()
    if len(errors):
        raise ClipError(f"{len(errors)} of {len(files_rows)} clips could not be scored: {errors.iloc[0]}")
    columns = list(target_columns(bundle.classes))
    reference = stored.set_index("utt_id").loc[files_rows["utt_id"], columns].to_numpy(dtype=np.float64)
    ours = files_rows[columns].to_numpy(dtype=np.float64)
    return {"clips": len(files_rows), "max_abs_diff": float(np.abs(ours - reference).max()),
            "argmax_agree": int((ours.argmax(1) == reference.argmax(1)).sum())}


def version_mismatches(bundle: Bundle) -> list[str]:
    """How the installed library versions differ (in major.minor) from those that made the bundle's features:
    each encoder's, as its feature store recorded them, and for transcripts the openai-whisper that wrote the
    bundle. Encoders whose stores recorded no versions (older stores) cannot be checked and are logged."""
    problems, unchecked = [], []
    for key in bundle.encoder_keys:
        recorded = bundle.encoders[key].get("versions")
        if not recorded:
            unchecked.append(key)
            continue
        for dist in sorted(recorded):
            # torch is recorded too, but another torch changes float rounding, not which features are computed:
            # not refused. Every library that defines the frames (transformers, tokenizers, openai-whisper,
            # opensmile, as the encoder recorded them) is checked.
            if dist == "torch" or recorded[dist] is None:
                continue
            installed = installed_version(dist)
            if installed is None or major_minor(installed) != major_minor(recorded[dist]):
                problems.append(f"encoder {key!r}: its features were made with {dist} {recorded[dist]}, "
                                f"installed: {installed or 'none'}")
    if bundle.needs_asr:
        recorded = bundle.manifest.get("created_by", {}).get("openai-whisper")
        installed = installed_version("openai-whisper")
        if recorded is not None and (installed is None or major_minor(installed) != major_minor(recorded)):
            problems.append(f"transcripts (ASR): the bundle was written with openai-whisper {recorded}, "
                            f"installed: {installed or 'none'}")
    if unchecked:
        log.warning("%s: the feature stores of encoder(s) %s recorded no library versions (made before medusa "
                    "recorded them): cannot check that this installation computes the same features",
                    bundle.path, ", ".join(unchecked))
    return problems


def load_bundle(path: str | Path, device: torch.device | str = "cpu", *,
                allow_version_mismatch: bool = False) -> Bundle:
    """A bundle written by save_bundle, after verifying every file against its manifest (BundleError names a
    missing or changed file). The members run on `device`; the meta-classifier stays on the CPU.

    Every file is checked as it is read, with a BundleError naming the file and the key or tensor: JSON that is
    not JSON, a key this version does not know or a missing one (meta.json, encoders.json, asr.json, each
    member's config.json and probe.json), a safetensors file whose header or data cannot be read, and any tensor
    of any safetensors file of the bundle that holds NaN or inf (the members would score every clip as NaN).

    BundleError if the installed transformers / openai-whisper / opensmile differ in major.minor from those that
    made the members' features (`version_mismatches`): other versions may compute other features, and the
    members would give wrong probabilities without an error. `allow_version_mismatch=True` loads it anyway,
    with a warning."""
    from medusa.features.batches import pick_device

    path = Path(path)
    device = pick_device(device) if isinstance(device, str) else device  # "auto" -> cuda if there is one
    manifest = verify_manifest(path)
    if "meta.json" not in manifest["files"]:
        raise BundleError(f"{path / 'meta.json'}: not listed in the bundle's manifest")
    meta_file = path / "meta.json"
    meta_info = check_keys(meta_file, read_bundle_json(meta_file), META_JSON_KEYS, META_JSON_REQUIRED)
    names = meta_info["members"]
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n and n == Path(n).name
                                                      and n not in (".", "..") for n in names)
            and len(set(names)) == len(names)):
        raise BundleError(f"{meta_file}: members is {names!r}, not a list of distinct member folder names; "
                          f"{COPY_AGAIN}")
    required = ["meta.safetensors", "encoders.json", "asr.json",
                *(f"members/{n}/{f}" for n in names for f in MODEL_FILES)]
    unlisted = [f for f in required if f not in manifest["files"]]
    if unlisted:
        raise BundleError(f"{path / unlisted[0]}: not listed in the bundle's manifest (a file the bundle needs "
                          "must be checksummed)")
    # every safetensors file the manifest lists (members, meta-classifier, any other): readable, finite. Only the
    # meta-classifier's tensors are kept: load_member reads a member's again (keeping them would double the memory)
    meta_state: dict[str, torch.Tensor] = {}
    for rel in manifest["files"]:
        if rel.endswith(".safetensors"):
            state = load_tensors(path / rel)
            meta_state = state if rel == "meta.safetensors" else meta_state
    cfg = _meta_config(meta_file, meta_info["config"])
    if cfg.n_models != len(names):
        raise BundleError(f"{meta_file}: the meta-classifier takes {cfg.n_models} member(s), "
                          f"{len(names)} are listed")
    if cfg.include_probes:
        unlisted = [n for n in names if f"members/{n}/{PROBE_FILE}" not in manifest["files"]]
        if unlisted:
            raise BundleError(f"{path / 'members' / unlisted[0] / PROBE_FILE}: the meta-classifier reads the "
                              f"members' probe posteriors (include_probes) but the bundle has no probe for member "
                              f"{unlisted[0]!r}; write the bundle again (dvc repro ensemble)")
    try:
        meta = MetaClassifier(cfg)
        meta.load_state_dict(meta_state)
    except (RuntimeError, TypeError, ValueError) as e:  # shapes or names of another config's weights
        if isinstance(e, RuntimeError) and "state_dict" not in str(e):
            raise  # not about the weights (e.g. out of memory): a bug or the machine, not the bundle
        raise BundleError(f"{path / 'meta.safetensors'}: not the weights of the meta-classifier meta.json "
                          f"describes ({_one_line(e)}); {COPY_AGAIN}") from None
    members = [Member(n, *_load_member(path / "members" / n, device)) for n in names]
    check_classes(cfg.classes, {m.name: m.config for m in members}, path)
    for m in members if cfg.include_probes else []:
        m.probe = read_probe(path / "members" / m.name, m.config)
    encoders_file, asr_file = path / "encoders.json", path / "asr.json"
    encoders = check_keys(encoders_file, read_bundle_json(encoders_file),
                          dict.fromkeys(k for m in members for k in m.encoders))
    for key, entry in encoders.items():
        check_keys(encoders_file, entry, ENCODER_ENTRY_KEYS, ENCODER_ENTRY_REQUIRED, key)
    asr = read_bundle_json(asr_file)
    if asr is not None:
        check_keys(asr_file, asr, ASR_JSON_KEYS, ASR_REQUIRED)
    missing = sorted({k for m in members for k in m.encoders} - set(encoders))
    if missing:
        raise BundleError(f"{encoders_file}: no entry for encoder(s) {', '.join(missing)}")
    bundle = Bundle(path, meta.eval(), members, encoders, asr, manifest, device,
                    train_durations=check_durations(meta_file, meta_info.get("train_durations")))
    if bundle.needs_asr and asr is None:
        raise BundleError(f"{asr_file}: a member reads transcripts but the bundle has no ASR settings")
    problems = version_mismatches(bundle)
    if problems and not allow_version_mismatch:
        raise BundleError(f"{path}: the installed libraries differ from those that made the members' features "
                          f"(major.minor):\n  " + "\n  ".join(problems) + "\nInstall those versions, or score "
                          "anyway with `medusa predict --allow-version-mismatch` (load_bundle(..., "
                          "allow_version_mismatch=True)): the features, hence the probabilities, may differ.")
    if problems:
        log.warning("%s: scoring with other library versions than those that made the features (allowed): %s",
                    path, "; ".join(problems))
    return bundle


def _one_line(error: BaseException) -> str:
    """A library exception's message on one line (load_state_dict's lists a problem per line), shortened."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _meta_config(file: Path, config: object) -> MetaConfig:
    """meta.json's `config`: MetaConfig's fields (and the former use_attributes), none missing but those that
    bundles written before them lack (MetaConfig.from_saved); BundleError naming the file and key otherwise."""
    check_keys(file, config, [*(f.name for f in fields(MetaConfig)), "use_attributes"], where="config")
    try:
        return MetaConfig.from_saved(config)  # type: ignore[arg-type]
    except TypeError as e:  # a required field missing (the dataclass's message names it)
        missing = [k for k in re.findall(r"'(\w+)'", str(e)) if k in {f.name for f in fields(MetaConfig)}]
        what = f"missing key(s) {', '.join('config.' + k for k in missing)}" if missing else f"config: {_one_line(e)}"
        raise BundleError(f"{file}: {what}; {COPY_AGAIN}") from None


def _load_member(folder: Path, device: torch.device) -> tuple[DeepSER, dict]:
    """A member of the bundle (medusa.model.members.load_member) after its config.json passed
    bundle.check_member_config; BundleError naming the file if the weights do not fit the config."""
    config_file = folder / "config.json"
    check_member_config(config_file, read_bundle_json(config_file))
    try:
        return load_member(folder, device)
    except (ValueError, RuntimeError) as e:  # missing, extra or misshapen weights
        if isinstance(e, RuntimeError) and "state_dict" not in str(e):
            raise  # not about the weights (e.g. CUDA out of memory): a bug or the machine, not the bundle
        text = _one_line(e)
        raise BundleError(text if text.startswith(str(folder)) else
                          f"{folder / 'model.safetensors'}: not the weights of the model config.json describes "
                          f"({text}); {COPY_AGAIN}") from None

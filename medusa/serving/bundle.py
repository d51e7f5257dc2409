"""The predict bundle's format: one folder that goes from audio files to emotion probabilities, without the
training data. This module writes it (save_bundle) and verifies it (verify_manifest); medusa.serving.inference
loads it and predicts with it.

    meta.safetensors       the meta-classifier's weights (the soup)
    meta.json              {"config": MetaConfig, "members": [names, in the meta-classifier's input order]};
                           config.include_probes says whether the meta-classifier reads the members' probes,
                           config.classes the run's classes (every member's config.json records the same ones):
                           the columns p_<code> of every prediction (bundles written before it: all 8 codes)
    members/<name>/        each member's model.safetensors and config.json, copied from work/models/<name>/, and
                           its probe.json (medusa.model.linear_probe.LinearProbe) when the meta-classifier reads probes
    encoders.json          per encoder key any member reads: every setting of the encoder's params (ENCODER_KEYS:
                           family, model, layers, batch_size, batch_seconds), pad_seconds -- how to recompute the
                           features the members were trained on -- and, from the feature store's meta.json, its
                           padding rule and the library versions that made it
    asr.json               the Whisper transcription settings, or null when no member reads a text encoder
    manifest.json          format version, the versions that wrote it, the git commit, sha256 of every file

Everything loads with safetensors and JSON only (no pickle), so a bundle from elsewhere cannot run code when
loaded. The manifest's checksums are verified before anything is used: a member silently swapped or a truncated
copy would otherwise give plausible but wrong probabilities. Then each file is checked as it is read (the
reading section below): a BundleError names the file and the key or tensor of JSON that is not JSON, a key this
version does not know or a missing one, a safetensors header or data that cannot be read, and a tensor holding
NaN or inf.

The pretrained encoders (Whisper, WavLM, MiniLM, ...) are not copied: encoders.json names them as params.yaml
did (hub name, local folder or demo:base), and they must be loadable where the bundle is used.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import math
import platform
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Mapping

import pydantic
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medusa.config.params import EncoderParams, TranscribeParams
from medusa.ensemble.meta import MetaClassifier
from medusa.errors import UserError
from medusa.features.encoders import kind_of
from medusa.io import sha256_file, write_json
from medusa.labels import common_classes
from medusa.model.deepser import DeepSERConfig
from medusa.model.linear_probe import PROBE_FILE, LinearProbe
from medusa.model.members import MODEL_FILES, MemberSpec, member_classes, read_member_config

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: Settings of the params schema that cannot change a clip's features or transcript: how a stage runs, not what it
#: computes. Every other field of EncoderParams / TranscribeParams is carried by the bundle (ENCODER_KEYS,
#: ASR_KEYS), so a setting added to the schema is carried without being listed here; tests/test_settings_once.py
#: checks that each field is either carried or excluded, with its reason.
ENCODER_EXCLUDED: frozenset[str] = frozenset()
ASR_EXCLUDED = frozenset({
    "num_workers",     # processes that read the audio: how fast, not what is transcribed
    "device",          # where Whisper runs: the bundle's user picks their own (medusa predict --device)
    "compare_subset",  # utterances the notebook also decodes with 30 s padding, only to compare speed and WER
    "threads",         # the stage's CPU threads, fixed so that its runs agree; a bundle's user sets their own
})
#: The keys of an encoders.json entry taken from the encoder's params (all required when a bundle is written; a
#: bundle is read by these names, so bundles written before a key was added still load).
ENCODER_KEYS = tuple(name for name in EncoderParams.model_fields if name not in ENCODER_EXCLUDED)
#: keys copied from a member's feature-store meta into encoders.json, when the store recorded them
STORE_SPEC_KEYS = ("padding", "versions")
#: The transcribe settings a bundle with a text encoder must be given (asr.json holds the settings as given).
ASR_KEYS = tuple(name for name in TranscribeParams.model_fields if name not in ASR_EXCLUDED)
#: openSMILE feature stores record family "opensmile" and the feature set; params name the family by set.
OPENSMILE_SETS = {"egemaps": "eGeMAPSv02", "compare": "ComParE_2016"}
#: The keys a bundle's files may hold, and those it reads without a fallback: anything else is refused at load
#: (a key this version does not know may change what the bundle computes; a typo'd key would silently be ignored).
META_JSON_KEYS = ("config", "members", "train_durations")
META_JSON_REQUIRED = ("config", "members")
#: meta.json `train_durations`: the training clips' durations (seconds) in a few numbers. Predict cuts long files
#: into pieces of the range the members were trained on (medusa.serving.predict: the default window is p95, VAD
#: segments are shaped to p05..p95); bundles written before it lack it and keep the former 30 s window.
DURATION_KEYS = ("n", "min", "p05", "p50", "p95", "max")
#: encoders.json entries: the carried settings, the padding and spec keys recorded from the feature store
ENCODER_ENTRY_KEYS = (*ENCODER_KEYS, "pad_seconds", *STORE_SPEC_KEYS)
ENCODER_ENTRY_REQUIRED = ("family", "model", "layers", "batch_size", "batch_seconds")
#: asr.json: the transcribe section as it was given (the excluded settings too); these are read by name
ASR_JSON_KEYS = tuple(TranscribeParams.model_fields)
ASR_REQUIRED = ("model", "language", "batch_size", "pad_seconds")
#: A member's config.json (medusa.model.members: MemberSpec.to_dict, then train_member's classes and store meta);
#: one_hot, device and threads: configs written by earlier versions, which still load.
MEMBER_CONFIG_KEYS = (*(f.name for f in dataclasses.fields(MemberSpec)), "pools", "classes", "feature_stores",
                      "one_hot", "device", "threads")
MEMBER_CONFIG_REQUIRED = ("encoders", "pools", "deepser")
#: what to do about a damaged file of a bundle
COPY_AGAIN = "the bundle is damaged: copy it again, or rebuild it (dvc repro ensemble)"
REPO_ROOT = Path(__file__).resolve().parents[2]


class BundleError(UserError, ValueError):
    """A bundle cannot be written or loaded as asked; the message names the file or member concerned."""


# ----------------------------------------------------------------------------------------------- writing


def _as_dict(obj: Any) -> dict[str, Any]:
    """A params section (pydantic) or a plain mapping, as a plain dict."""
    return dict(obj.model_dump() if hasattr(obj, "model_dump") else obj)


def installed_version(dist: str) -> str | None:
    """The installed version of the distribution `dist`, or None when it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _medusa_version() -> str | None:
    """The version in the checkout's pyproject.toml (what the code is), else the installed distribution's."""
    pyproject = REPO_ROOT / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        try:
            return tomllib.loads(pyproject.read_text())["project"]["version"]
        except (tomllib.TOMLDecodeError, KeyError):
            pass
    return installed_version("medusa-ser")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _provenance() -> dict[str, Any]:
    status = _git("status", "--porcelain", "--untracked-files=no")
    # no wall-clock timestamp: the same code and inputs give the same bundle, byte for byte (DVC hashes it)
    return {"created_by": {"python": platform.python_version(), "torch": torch.__version__,
                           "transformers": installed_version("transformers"),
                           "openai-whisper": installed_version("openai-whisper"),
                           "medusa": _medusa_version()},
            "git_commit": _git("rev-parse", "HEAD"),
            # uncommitted changes to tracked files mean the commit alone does not say what code wrote the bundle
            "git_dirty": None if status is None else bool(status)}


def _store_mismatch(entry: dict[str, Any], meta: Mapping[str, Any]) -> list[str]:
    """How an encoders entry differs from the meta.json of the feature store a member was trained on: a
    different model would give features the member has never seen, and wrong probabilities without an error."""
    problems = []
    family, stored = entry["family"], meta.get("family")
    if stored is not None and stored != family and not (stored == "opensmile" and family in OPENSMILE_SETS):
        problems.append(f"family {family!r} but the store was made by {stored!r}")
    if family in OPENSMILE_SETS and meta.get("feature_set", OPENSMILE_SETS[family]) != OPENSMILE_SETS[family]:
        problems.append(f"family {family!r} but the store holds openSMILE {meta['feature_set']!r}")
    if "model" in meta and meta["model"] != entry["model"]:
        problems.append(f"model {entry['model']!r} but the store was made with {meta['model']!r}")
    if "layers" in meta and list(meta["layers"]) != list(entry["layers"]):
        problems.append(f"layers {list(entry['layers'])} but the store has {list(meta['layers'])}")
    return problems


def _encoder_entries(configs: dict[str, dict[str, Any]], encoders: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """encoders.json: one entry per encoder key the members read, checked against the members' stores."""
    entries: dict[str, dict[str, Any]] = {}
    dims: dict[str, tuple[int, str]] = {}
    for name, config in configs.items():
        stores = config.get("feature_stores", {})
        for i, key in enumerate(config["encoders"]):
            if key not in encoders:
                raise BundleError(f"member {name!r} reads encoder {key!r}, which `encoders` does not define "
                                  f"(have: {', '.join(encoders) or 'none'})")
            raw = _as_dict(encoders[key])
            missing = [k for k in ENCODER_KEYS if k not in raw]
            if missing:
                raise BundleError(f"encoders.{key}: missing {', '.join(missing)}")
            meta = stores.get(key, {})
            entry = {k: raw[k] for k in ENCODER_KEYS}
            entry["layers"] = list(entry["layers"])
            # Whisper's padding changes its features; the store records the value its features were made with.
            entry["pad_seconds"] = float(meta.get("pad_seconds", raw.get("pad_seconds", 0.0)))
            entry.update({k: meta[k] for k in STORE_SPEC_KEYS if k in meta})
            problems = _store_mismatch(entry, meta)
            if problems:
                raise BundleError(f"encoders.{key} does not match the features member {name!r} was trained on: "
                                  f"{'; '.join(problems)}")
            dim = int(config["deepser"]["input_dims"][i])
            if "dim" in meta and int(meta["dim"]) != dim:
                raise BundleError(f"member {name!r}: input {i} ({key}) is {dim}-d but its store is {meta['dim']}-d")
            if key in dims and dims[key][0] != dim:
                raise BundleError(f"members {dims[key][1]!r} and {name!r} disagree on the width of {key!r} "
                                  f"({dims[key][0]} vs {dim})")
            if key in entries and entries[key] != entry:
                raise BundleError(f"members {dims[key][1]!r} and {name!r} were trained on different {key!r} "
                                  f"features ({entries[key]} vs {entry})")
            entries[key] = entry
            dims.setdefault(key, (dim, name))
    return entries


def duration_summary(durations: Iterable[float]) -> dict[str, float]:
    """meta.json's `train_durations` (DURATION_KEYS) of the training clips' durations in seconds."""
    import numpy as np

    d = np.asarray([float(x) for x in durations], dtype=np.float64)
    if not len(d) or not np.isfinite(d).all() or (d <= 0).any():
        raise BundleError(f"train_durations: {len(d)} durations, which must be finite and positive")
    p05, p50, p95 = np.percentile(d, [5, 50, 95])
    return {"n": int(len(d)), "min": round(float(d.min()), 3), "p05": round(float(p05), 3),
            "p50": round(float(p50), 3), "p95": round(float(p95), 3), "max": round(float(d.max()), 3)}


def check_durations(file: Path, value: Any) -> dict[str, float] | None:
    """meta.json's `train_durations` as read (None when absent); BundleError naming the file and key unless it
    holds every DURATION_KEYS number, finite and positive, in order min <= p05 <= p50 <= p95 <= max."""
    if value is None:
        return None
    check_keys(file, value, DURATION_KEYS, DURATION_KEYS, "train_durations")
    numbers = [value[k] for k in DURATION_KEYS]
    if not (all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                for v in numbers) and numbers[1:] == sorted(numbers[1:])):
        raise BundleError(f"{file}: train_durations is {value!r}: finite positive numbers with min <= p05 <= p50 "
                          f"<= p95 <= max are expected; {COPY_AGAIN}")
    return {k: float(v) for k, v in value.items()}


def save_bundle(out_dir: str | Path, meta: MetaClassifier, member_dirs: list[str | Path] | list[Path],
                encoders: Mapping[str, Any], asr: Mapping[str, Any] | None,
                train_durations: Iterable[float] | None = None) -> Path:
    """Write the bundle of `meta` over the members in `member_dirs` (in the meta-classifier's input order) to
    `out_dir`, atomically (built in `<out_dir>.partial`, then renamed). `encoders` maps encoder keys to their
    params entries (family, model, layers, batch_size, batch_seconds; pydantic sections are accepted); `asr`
    holds the transcribe params, needed only when a member reads a text encoder; `train_durations`: the
    durations (s) of the clips the members were trained on, recorded as duration_summary (predict's windows).
    Returns `out_dir`."""
    out_dir = Path(out_dir)
    member_dirs = [Path(d) for d in member_dirs]
    n_models = meta.cfg.n_models
    if len(member_dirs) != n_models:
        raise BundleError(f"the meta-classifier takes the posteriors of {n_models} member(s) (n_models={n_models}) "
                          f"but {len(member_dirs)} member folder(s) were given: "
                          f"{', '.join(d.name for d in member_dirs) or 'none'}")
    configs: dict[str, dict[str, Any]] = {}
    sources: dict[str, Path] = {}
    for folder in member_dirs:
        config = read_member_config(folder)
        name = str(config.get("name") or folder.name)
        if name in configs:
            raise BundleError(f"two members are named {name!r} ({sources[name]} and {folder})")
        if len(config["encoders"]) != len(config["deepser"]["input_dims"]):
            raise BundleError(f"{folder / 'config.json'}: {len(config['encoders'])} encoders but "
                              f"{len(config['deepser']['input_dims'])} DeepSER inputs")
        configs[name], sources[name] = config, folder
    check_classes(meta.cfg.classes, configs, out_dir)
    probes = {name: read_probe(Path(folder), configs[name])
              for name, folder in sources.items()} if meta.cfg.include_probes else {}
    entries = _encoder_entries(configs, encoders)
    text_keys = [k for k, e in entries.items() if kind_of(e["family"]) == "text"]
    asr_entry = None
    if text_keys:
        if asr is None:
            raise BundleError(f"encoder(s) {', '.join(text_keys)} read transcripts, but no ASR (transcribe) "
                              "settings were given")
        asr_entry = _as_dict(asr)
        missing = [k for k in ASR_KEYS if k not in asr_entry]
        if missing:
            raise BundleError(f"transcribe settings: missing {', '.join(missing)}")

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in meta.state_dict().items()},
              str(partial / "meta.safetensors"))
    durations = None if train_durations is None else duration_summary(train_durations)
    write_json({"config": asdict(meta.cfg), "members": list(configs),
                **({"train_durations": durations} if durations else {})}, partial / "meta.json")
    for name, folder in sources.items():
        (partial / "members" / name).mkdir(parents=True)
        for f in MODEL_FILES + ((PROBE_FILE,) if name in probes else ()):
            shutil.copyfile(folder / f, partial / "members" / name / f)
    write_json(entries, partial / "encoders.json")
    write_json(asr_entry, partial / "asr.json")
    files = {p.relative_to(partial).as_posix(): sha256_file(p) for p in sorted(partial.rglob("*")) if p.is_file()}
    write_json({"format_version": FORMAT_VERSION, **_provenance(), "files": files}, partial / "manifest.json")
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    log.info("wrote bundle %s: %d members%s, encoders %s", out_dir, len(configs),
             " and their probes" if probes else "", ", ".join(entries))
    return out_dir


def check_classes(classes: tuple[str, ...], configs: dict[str, dict[str, Any]], where: Path) -> None:
    """Every member predicts the classes the meta-classifier reads (`classes`, the run's), in the same order; a
    BundleError naming the members and their classes otherwise."""
    try:
        shared = common_classes({f"member {name!r}": member_classes(c) for name, c in configs.items()}, "members")
    except ValueError as e:
        raise BundleError(f"{where}: {e}") from None
    if shared != tuple(classes):
        raise BundleError(f"{where}: the meta-classifier reads posteriors over the classes {' '.join(classes)}, "
                          f"its members ({', '.join(configs)}) predict {' '.join(shared)}")


def read_probe(folder: Path, config: dict[str, Any]) -> LinearProbe:
    """The member's linear probe, checked against the member's inputs: it reads the concatenated frame means of
    the member's encoders, so its width must be the sum of theirs; its outputs are the member's classes. A
    BundleError names the file and key if probe.json is not JSON, has an unknown or missing key, or a number that
    is not finite (JSON allows NaN and Infinity)."""
    file = Path(folder) / PROBE_FILE
    if not file.is_file():
        LinearProbe.load(folder)  # FileNotFoundError: no probe (a member older than probes) and how to make one
    fix = f"retrain the member (dvc repro train@{Path(folder).name}) and rebuild the bundle"
    fields = dataclasses.fields(LinearProbe)
    data = check_keys(file, read_bundle_json(file, fix), [f.name for f in fields],
                      [f.name for f in fields if f.default is f.default_factory is dataclasses.MISSING], fix=fix)
    for key in ("mean", "scale", "coef", "intercept"):
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in _flat(data[key])):
            raise BundleError(f"{file}: {key} holds a value that is not a finite number (NaN, inf or "
                              f"not a number): the probe would give non-finite probabilities; {fix}")
    probe = LinearProbe(**data)
    width = sum(int(d) for d in config["deepser"]["input_dims"])
    if len(probe.mean) != width or any(len(row) != width for row in probe.coef):
        raise BundleError(f"{folder / PROBE_FILE}: the probe reads {len(probe.mean)} features, but the member's "
                          f"encoders ({', '.join(config['encoders'])}) give {width}; retrain the member")
    if tuple(probe.outputs) != member_classes(config):
        raise BundleError(f"{folder / PROBE_FILE}: the probe predicts the classes {' '.join(probe.outputs)}, the "
                          f"member {' '.join(member_classes(config))}; retrain the member")
    return probe


# --------------------------------------------------------------------------------------------- verifying


def verify_manifest(path: str | Path) -> dict[str, Any]:
    """The bundle's manifest, after checking every listed file's sha256; BundleError names the first file
    that is missing or differs."""
    path = Path(path)
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        raise BundleError(f"{path}: not a predict bundle (no manifest.json); write one with save_bundle")
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as e:  # ValueError: invalid JSON, or bytes that are not UTF-8 text
        raise BundleError(f"{manifest_file}: cannot be read as JSON ({e}); the bundle is damaged: copy it "
                          "again") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_file}: not a bundle manifest (a JSON object with `format_version` and "
                          "`files`); the bundle is damaged: copy it again")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{manifest_file}: bundle format {manifest.get('format_version')!r}, this version of "
                          f"medusa reads format {FORMAT_VERSION}")
    if not isinstance(manifest.get("files"), dict):
        raise BundleError(f"{manifest_file}: no `files` object (the checksums of the bundle's files); the bundle "
                          "is damaged: copy it again")
    root = path.resolve()
    for rel, digest in manifest["files"].items():
        file = (path / rel).resolve()
        if not file.is_relative_to(root):
            raise BundleError(f"{manifest_file}: lists {rel!r}, which is outside the bundle")
        if not file.is_file():
            raise BundleError(f"{path / rel}: listed in the bundle's manifest but missing")
        if sha256_file(file) != digest:
            raise BundleError(f"{path / rel}: sha256 differs from the bundle's manifest (the file was changed or "
                              "damaged after the bundle was written); copy the bundle again")
    return manifest


def major_minor(version: str) -> str:
    """"5.24.0" -> "5.24"; "2.13.0+cpu" -> "2.13"; a date version ("20250625") stays whole."""
    return ".".join(str(version).split("+")[0].split(".")[:2])



# ----------------------------------------------------------------------------------------------- reading
# The checks every file of a bundle passes when it is loaded (medusa.serving.inference.load_bundle): a library's
# exception (JSONDecodeError, SafetensorError, a dataclass's TypeError, pydantic's ValidationError) caused by a
# damaged or edited bundle becomes one BundleError naming the file and the key or tensor.


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def _flat(value: Any) -> list:
    """The numbers of a nested list (a probe's coefficients), or the value itself in a list."""
    if isinstance(value, list):
        return [x for v in value for x in _flat(v)]
    return [value]


def read_bundle_json(file: Path, fix: str = COPY_AGAIN) -> Any:
    """A JSON file of a bundle; BundleError naming it when it is missing, unreadable or not JSON."""
    try:
        return json.loads(Path(file).read_text())
    except FileNotFoundError:
        raise BundleError(f"{file}: missing; {fix}") from None
    except (OSError, ValueError) as e:  # ValueError: invalid JSON, or bytes that are not UTF-8 text
        raise BundleError(f"{file}: cannot be read as JSON ({_first_line(e)}); {fix}") from None


def check_keys(file: Path, data: Any, known: Iterable[str], required: Iterable[str] = (), where: str = "",
               fix: str = COPY_AGAIN) -> dict[str, Any]:
    """`data` (read from `file`, at `where`: "" for the whole file, else a dotted key) as a dict whose keys are
    all `known` and hold every `required` one; a BundleError naming the file and the key otherwise."""
    prefix = f"{where}." if where else ""
    if not isinstance(data, dict):
        raise BundleError(f"{file}: {where or 'the file'} is a JSON {type(data).__name__}, not an object with the "
                          f"keys {', '.join(known)}; {fix}")
    known = list(known)
    unknown = [k for k in data if k not in known]
    if unknown:
        raise BundleError(f"{file}: unknown key(s) {', '.join(prefix + k for k in unknown)} (known: "
                          f"{', '.join(known)}); the bundle was written by another version of medusa or edited: "
                          "rebuild it with this version (dvc repro ensemble)")
    missing = [k for k in required if k not in data]
    if missing:
        raise BundleError(f"{file}: missing key(s) {', '.join(prefix + k for k in missing)}; {fix}")
    return data


def load_tensors(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file of a bundle, on the CPU. BundleError naming the file when its header or
    data cannot be read (safetensors' SafetensorError), and naming the tensor when one holds NaN or inf: such
    weights give non-finite (or meaningless) probabilities and attributes without an error."""
    try:
        tensors = load_file(str(file), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise BundleError(f"{file}: not a readable safetensors file ({_first_line(e)}); {COPY_AGAIN}") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise BundleError(f"{file}: tensor {name!r} holds {bad} non-finite value(s) (NaN or inf) of "
                                  f"{tensor.numel()}: the model would score every clip as NaN or inf; retrain it "
                                  "(it diverged, or the file was edited) and rebuild the bundle (dvc repro ensemble)")
    return tensors


def check_member_config(file: Path, config: Any) -> dict[str, Any]:
    """A member's config.json as the bundle reads it: known keys only (MEMBER_CONFIG_KEYS), encoders, pools and
    the DeepSER architecture present and consistent, its classes those of its class outputs. BundleError naming
    the file and key otherwise."""
    fix = f"rebuild the bundle from a member trained by this version (dvc repro train@{file.parent.name} ensemble)"
    check_keys(file, config, MEMBER_CONFIG_KEYS, MEMBER_CONFIG_REQUIRED, fix=fix)
    deepser = check_keys(file, config["deepser"], [*DeepSERConfig.model_fields], ["input_dims"], "deepser", fix)
    try:
        DeepSERConfig.from_dict(deepser)
    except (pydantic.ValidationError, TypeError) as e:
        words = {"missing": "missing key", "extra_forbidden": "unknown key"}
        problems = [f"deepser.{'.'.join(map(str, err['loc']))}: {words.get(err['type'], err['msg'])}"
                    for err in e.errors()] if isinstance(e, pydantic.ValidationError) else [f"deepser: {_first_line(e)}"]
        raise BundleError(f"{file}: {'; '.join(problems)}; {fix}") from None
    encoders, pools = config["encoders"], config["pools"]
    if not (isinstance(encoders, list) and all(isinstance(k, str) for k in encoders)):
        raise BundleError(f"{file}: encoders is {encoders!r}, not a list of encoder keys; {fix}")
    if not (isinstance(pools, list) and all(isinstance(p, int) and p >= 1 for p in pools)):
        raise BundleError(f"{file}: pools is {pools!r}, not a list of whole numbers >= 1; {fix}")
    if not len(encoders) == len(pools) == len(deepser["input_dims"]):
        raise BundleError(f"{file}: {len(encoders)} encoders, {len(pools)} pools and {len(deepser['input_dims'])} "
                          f"deepser.input_dims: one of each per encoder; {fix}")
    try:
        member_classes(config)
    except ValueError as e:
        raise BundleError(f"{file}: {e}; {fix}") from None
    return config

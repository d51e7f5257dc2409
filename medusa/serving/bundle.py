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
copy would otherwise give plausible but wrong probabilities.

The pretrained encoders (Whisper, WavLM, MiniLM, ...) are not copied: encoders.json names them as params.yaml
did (hub name, local folder or demo:base), and they must be loadable where the bundle is used.
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import platform
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file

from medusa.config.params import EncoderParams, TranscribeParams
from medusa.ensemble.meta import MetaClassifier
from medusa.features.encoders import kind_of
from medusa.io import sha256_file, write_json
from medusa.labels import common_classes
from medusa.model.linear_probe import PROBE_FILE, LinearProbe
from medusa.model.members import MODEL_FILES, member_classes, read_member_config

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
REPO_ROOT = Path(__file__).resolve().parents[2]


class BundleError(ValueError):
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


def save_bundle(out_dir: str | Path, meta: MetaClassifier, member_dirs: list[str | Path] | list[Path],
                encoders: Mapping[str, Any], asr: Mapping[str, Any] | None) -> Path:
    """Write the bundle of `meta` over the members in `member_dirs` (in the meta-classifier's input order) to
    `out_dir`, atomically (built in `<out_dir>.partial`, then renamed). `encoders` maps encoder keys to their
    params entries (family, model, layers, batch_size, batch_seconds; pydantic sections are accepted); `asr`
    holds the transcribe params, needed only when a member reads a text encoder. Returns `out_dir`."""
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
    write_json({"config": asdict(meta.cfg), "members": list(configs)}, partial / "meta.json")
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
    the member's encoders, so its width must be the sum of theirs; its outputs are the member's classes."""
    probe = LinearProbe.load(folder)
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


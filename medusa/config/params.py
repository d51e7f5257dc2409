"""Load and validate params.yaml.

Each stage has one section; a pydantic model per section declares its keys and types. Validation is strict
(no silent coercion of "3" to 3) and forbids unknown keys, so a typo never falls back to a default.
Errors name the key path, e.g. ``prepare.test_fraction: expected float, got str 'ten'``. Every YAML file is read by
`read_yaml`, which also refuses a key given twice in a mapping and reports a syntax error as one line.
"""
from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medusa.errors import UserError
from medusa.labels import CODES, CONSENSUS_CODES

PARAMS_FILE = Path("params.yaml")


class ParamsError(UserError, ValueError):
    """params.yaml (or a preset) is missing a key, has an unknown one, or has a value of the wrong type."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping, naming its key path and both lines.

    Why: SafeLoader keeps the last of two equal keys without a word, so `prepare:` given twice dropped the first
    section whole (validation then listed its keys as missing) and `lr:` twice inside `train:` trained with the
    second rate: a silent wrong result. A mapping's key path is recorded for each value by the mapping or list that
    holds it, before that value is constructed, so a nested mapping knows where it sits (e.g. train.lr)."""

    def __init__(self, stream, source: str):
        super().__init__(stream)
        self.source = source
        self.key_paths: dict[int, str] = {}     # id(node) -> its key path in the document

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            path, seen = self.key_paths.get(id(node), ""), {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue    # `<<: *base` merges a mapping in whose keys this one may override by design
                key = self.construct_object(key_node, deep=True)
                where = f"{path}.{key}" if path else str(key)
                self.key_paths.setdefault(id(value_node), where)
                mark = key_node.start_mark
                try:
                    first = seen.get(key)
                except TypeError:
                    continue    # an unhashable key: SafeLoader's own construct_mapping reports it
                if first is not None:
                    lines = (f"at lines {first.line + 1} and {mark.line + 1}" if first.line != mark.line else
                             f"on line {mark.line + 1} (columns {first.column + 1} and {mark.column + 1})")
                    raise ParamsError(f"{self.source}:{mark.line + 1}: {where}: key given twice, {lines} (YAML "
                                      "would silently keep only the last: keep one)")
                seen[key] = mark
        return super().construct_mapping(node, deep=deep)

    def construct_sequence(self, node, deep=False):
        path = self.key_paths.get(id(node), "")
        for i, item in enumerate(node.value):
            self.key_paths.setdefault(id(item), f"{path}[{i}]")
        return super().construct_sequence(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """The YAML file at `path` (params.yaml, a preset or an override), read safely (no Python objects). A key given
    twice in a mapping, a syntax error, undecodable text or a missing file is a ParamsError of one line naming
    the file (and line)."""
    path = Path(path)
    if path.is_dir():
        raise ParamsError(f"{path}: a folder, not a YAML file (pass the file's path)")
    if not path.is_file():
        raise ParamsError(f"{path}: file not found (run from the repository root, or pass its path)")
    data, loader = path.read_bytes(), None
    try:
        loader = _UniqueKeyLoader(data, str(path))  # bytes: PyYAML detects a BOM and checks the UTF-8 itself
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(str(e.problem or e.context or "unreadable YAML").split())
        raise ParamsError(f"{where}: YAML syntax error: {problem} ({_yaml_hint(e)})") from None
    except yaml.reader.ReaderError as e:
        if e.encoding == "unicode":     # a control character in decoded text: its position counts characters
            line = data.decode("utf-8", "replace")[:e.position].count("\n") + 1
            what = f"control character #x{e.character:04x} (delete it)"
        else:                           # bytes that do not decode: the position counts bytes
            line = data[:e.position].count(b"\n") + 1
            what = f"byte {e.character:#04x} is not {e.encoding} (save the file as UTF-8 text)"
        raise ParamsError(f"{path}:{line}: not readable as YAML text: {what}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_hint(e: yaml.MarkedYAMLError) -> str:
    """How to fix a YAML syntax error, from PyYAML's description of it."""
    context = ""
    if e.context and e.context_mark is not None:
        context = f"{e.context} from line {e.context_mark.line + 1}; "
    elif e.context:
        context = f"{e.context}; "
    problem = str(e.problem or "")
    if "'\\t'" in problem or "\t" in problem:
        return context + "YAML indents with spaces only: replace the tab with spaces"
    if "mapping values are not allowed" in problem:
        return context + "quote a value that holds ': ', or check the indentation of this key"
    return context + "check the indentation, colons, brackets and quotes at and above this line"


def label_word_clash(pairs: list[tuple[str, str]]) -> tuple[tuple[str, str], tuple[str, str]] | None:
    """The first two (word, code) pairs that give one label word twice, or None. Labels are matched ignoring case
    and surrounding spaces (medusa.data.corpora.csv_manifest.label_code), so `calm` and `Calm` are one word and
    the last one would win silently. Refused: two spellings of the word (even with one code: the user meant two
    words, or mistyped one), or one spelling with two codes. Allowed: the same pair repeated, which changes
    nothing (prepare.label_map cannot repeat a key: read_yaml refuses it)."""
    seen: dict[str, tuple[str, str]] = {}
    for word, code in pairs:
        first = seen.setdefault(word.strip().lower(), (word, code))
        if first != (word, code) and (first[0].strip() != word.strip() or first[1] != code):
            return first, (word, code)
    return None


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @classmethod
    def from_cell(cls, namespace: dict[str, Any]) -> "Section":
        """The section from a stage notebook's parameters cell, whose names (each `= None` there: the values live
        in params.yaml only) the runner (medusa.pipeline.run) sets from params.yaml; validated by the schema, so a
        value set by hand is checked like one in params.yaml."""
        values = {key: namespace.get(key) for key in cls.model_fields}
        if all(value is None for value in values.values()):
            raise ParamsError(f"the parameters cell's {', '.join(values)} are unset: run the notebook through its "
                              "stage (`dvc repro`, or python -m medusa.pipeline.run NOTEBOOK --section ...), which "
                              "injects them from params.yaml")
        return cls(**values)


class DemoCorpusParams(Section):
    """The synthetic demo corpus (medusa.data.corpora.demo). Changing any value changes data/ and data.dvc."""
    seed: int
    n_speakers: int = Field(ge=6)
    n_train: int = Field(ge=1)
    n_development: int = Field(ge=1)
    n_blind: int = Field(ge=0)
    annotators_min: int = Field(ge=1)
    annotators_max: int = Field(ge=1)


class PrepareParams(Section):
    """Corpus -> manifest (medusa.data.corpora.manifest)."""
    #: A folder in the MSP-Podcast challenge layout (Audios/, Labels/, Transcripts/) or a CSV manifest (a file
    #: ending in .csv; columns in medusa/data/corpora/csv_manifest.py).
    corpus: str
    #: Split_Set values of an MSP-layout corpus that form the training pool (cut into train/test) and dev.
    train_sets: list[str]
    dev_sets: list[str]
    #: The run's classes: "auto" (the codes with training rows, in A S H U F D C N order) or a list of codes.
    classes: Literal["auto"] | list[str]
    #: Labels of a CSV manifest that are not a class code or name, mapped to one, e.g. {boredom: O, calm: N}.
    label_map: dict[str, str]
    #: Shares of the speakers' utterances for dev and test where a CSV manifest gives no split (speaker-disjoint,
    #: stratified by class); test_fraction is also the test cut of a training pool that has no test rows.
    dev_fraction: float = Field(gt=0, lt=1)
    test_fraction: float = Field(gt=0, lt=1)
    #: The prepare notebook warns where a class has fewer utterances than this in a split.
    min_per_class: int = Field(ge=0)
    #: Audio longer than Whisper's 30 s window: reject (an error naming the file) or segment (equal pieces).
    long_audio: Literal["reject", "segment"]
    #: List and skip unreadable, empty, too short or too long audio instead of stopping at the first report.
    skip_bad_audio: bool
    seed: int
    #: Seeded candidate assignments of speakers to splits searched for one holding every class in every split
    #: (medusa.data.corpora.splits), for a CSV's rows without a split and the test cut of a training pool.
    split_draws: int = Field(ge=1)
    #: true: where no assignment found puts every class in every derived split, warn and keep the best one
    #: instead of stopping (a class spoken by too few speakers then misses a split).
    allow_uncovered_classes: bool
    #: The channel probes of the prepare notebook run on at most this many train+test utterances.
    probe_max_utterances: int = Field(ge=50)

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "corpus_dir" in data:
            raise ValueError("corpus_dir was renamed to `corpus` (a folder in the MSP-Podcast layout or a CSV "
                             "manifest): write `corpus: " + str(data["corpus_dir"]) + "`")
        label_map = data.get("label_map") if isinstance(data, dict) else None
        if isinstance(label_map, dict):
            bad = [k for k, v in label_map.items() if not isinstance(k, str) or not isinstance(v, str)]
            if bad:
                raise ValueError(f"label_map: {bad[0]!r}: {label_map[bad[0]]!r}: words and codes are text; quote "
                                 "numbers, e.g. '01': N")
            same = label_word_clash(list(label_map.items()))
            if same:
                (word, code), (other, other_code) = same
                raise ValueError(f"label_map: {word!r} ({code}) and {other!r} ({other_code}) are one word (labels are "
                                 "matched ignoring case and surrounding spaces): keep one")
        return data

    @model_validator(mode="after")
    def _known_codes(self) -> "PrepareParams":
        if self.classes != "auto":
            bad = [c for c in self.classes if c not in CODES]
            if bad or not self.classes or len(set(self.classes)) != len(self.classes):
                raise ValueError(f"classes: expected auto or distinct codes of {' '.join(CODES)}, got {self.classes}")
        bad = {k: v for k, v in self.label_map.items() if v not in CONSENSUS_CODES}
        if bad:
            raise ValueError(f"label_map: {bad} maps to no code of {' '.join(CONSENSUS_CODES)} (O: other, "
                             "X: no agreement)")
        if self.dev_fraction + self.test_fraction >= 1:
            raise ValueError(f"dev_fraction + test_fraction must be < 1, got {self.dev_fraction + self.test_fraction}")
        return self


class TranscribeParams(Section):
    """Whisper ASR (medusa.features.asr)."""
    model: str                  # checkpoint path, openai-whisper name (large-v3), or demo:base / demo:tiny.en
    language: str               # a Whisper language code, or auto (detected per clip)
    batch_size: int = Field(ge=1)
    #: Pad each clip to whole seconds, at least clip + 1 s and pad_seconds (clips of one padded length are decoded
    #: together); 30 = Whisper's fixed 30 s window.
    pad_seconds: float = Field(ge=0, le=30)
    beam_size: int = Field(ge=1)
    num_workers: int = Field(ge=0)
    device: str
    #: torch CPU threads of each process (0 = torch's default). CPU transcripts can change with the thread count,
    #: so it is fixed: the same for one process and for every rank of `parallel.ranks`.
    threads: int = Field(ge=0)
    #: Utterances on which the notebook also runs 30 s padding, to compare speed and WER.
    compare_subset: int = Field(ge=0)


class EncoderParams(Section):
    """One encoder of the registry (medusa.features.encoders); its key in `encoders` names its feature store."""
    family: Literal["wavlm", "hubert", "wav2vec2", "whisper", "roberta", "modernbert", "minilm", "egemaps",
                    "compare"]
    model: str                  # hub name or local path; demo:base for the offline Whisper; "" = the wheel's
    layers: list[int]           # hidden states averaged: [-1] = last, [-4, -3, -2, -1] = mean of the last 4
    batch_size: int = Field(ge=1)
    batch_seconds: float = Field(gt=0)   # at most this much padded audio per batch (audio encoders)


class ExtractParams(Section):
    """Settings shared by every extract@ENCODER stage (medusa.features.extract)."""
    device: str
    num_workers: int = Field(ge=0)
    #: torch CPU threads of each process (0 = torch's default), fixed as transcribe.threads is.
    threads: int = Field(ge=0)
    #: Whisper encoder: pad each clip to whole seconds, at least its length and this many seconds.
    whisper_pad_seconds: float = Field(ge=0, le=30)


class ArchitectureParams(Section):
    """DeepSER's architecture (paper: hidden 1024, 2 layers per ENC): the `train` keys of these names. A model
    (medusa.model.deepser.DeepSERConfig) extends this class with what the data decides (input widths, classes),
    so that each setting is declared, bounded and checked here only."""
    hidden: int = Field(ge=1)
    layers: int = Field(ge=2)                   # transformer layers per ENC (h_first and h_last must differ)
    heads: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    ff_mult: int = Field(ge=1)                  # feed-forward width = ff_mult * hidden
    fusion: Literal["deep", "late"]             # late = Table 2's "late fusion" ablation

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "ArchitectureParams":
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


class TrainParams(ArchitectureParams):
    """Stages 1-2 of every DeepSER (medusa.model.training, medusa.model.members): its architecture (the keys of
    ArchitectureParams) and the recipe below. A model's `overrides` may change any key."""
    device: str
    amp: bool                   # bf16 autocast on CUDA
    #: CPU threads of torch while training (0 = torch's default). CPU results are reproducible for a fixed
    #: thread count; the demo uses 1 (about 10 % slower than 2 at its size) so that they do not depend on the
    #: machine's core count, and the ablation stage can train two runs side by side.
    threads: int = Field(default=0, ge=0)
    targets: Literal["soft", "one_hot"]         # one_hot = Table 2's "one-hot targets" ablation
    #: Frames averaged per time step, per encoder key (e.g. 10: 50 frames/s -> 5/s); encoders not listed: 1.
    pool: dict[str, int]
    #: z-score every input dimension with the mean and deviation of the training split's (pooled) frames, kept in
    #: the model's weights so that training, evaluation and prediction apply it identically. Not the paper's
    #: (its SSL features enter raw), but raw eGeMAPS spans 0.0-324 in deviation and up to 2.7e3 in mean.
    standardise: bool
    # the recipe (paper: AdamW, batch 16, lr 1e-5, MixUp p 0.3, loss 1.5 CE + 0.4 MSE)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    #: Optimizer steps per epoch (the unit of dev evaluation, early stopping and checkpoints). 0: one pass over
    #: the stage's rows (the paper's epoch); N: N steps of batches from fresh passes, so that a small corpus gets
    #: as many steps as a large one (budget: stage*_epochs x N steps, less if patience stops a stage).
    epoch_steps: int = Field(ge=0)
    stage1_epochs: int = Field(ge=1)
    stage2_epochs: int = Field(ge=0)            # 0 = Table 2's "w/o stage 2"
    patience: int = Field(ge=1)                 # epochs without a better dev score before a stage stops
    grad_clip: float = Field(ge=0)              # 0 = no clipping
    mixup_p: float = Field(ge=0, le=1)          # 0 = Table 2's "w/o MixUp"
    mixup_alpha: float = Field(gt=0)
    ce_weight: float = Field(gt=0)
    mse_weight: float = Field(ge=0)             # 0 = Table 2's "w/o multitask"
    class_weighted: bool                        # stage-1 class weights alpha_c = (N / (|C| f_c))^0.5

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        # a preset, a model's overrides or an ablation variant written before the probe got its own section
        if isinstance(data, dict) and "baseline_c" in data:
            raise ValueError("baseline_c moved out of `train` to the `probe` section (the linear probe is not part "
                             f"of DeepSER's training): write `probe: {{c: {data['baseline_c']}}}`")
        return data

    @model_validator(mode="after")
    def _pool_factors(self) -> "TrainParams":
        for key, factor in self.pool.items():
            if factor < 1:
                raise ValueError(f"pool.{key} must be >= 1, got {factor}")
        return self


class ProbeParams(Section):
    """Every member's linear probe (medusa.model.linear_probe): logistic regression on the member's mean-pooled,
    standardised features, fitted beside it and shown beside it in Table 1. Its own section, apart from `train`,
    because none of it changes how a DeepSER trains."""
    c: float = Field(gt=0)      # inverse L2 regularisation strength (scikit-learn's C)


class ModelParams(Section):
    """One DeepSER of the ensemble: its encoders (feature stores, in this order), its seed, its own settings."""
    encoders: list[str] = Field(min_length=1)
    seed: int
    #: Keys of `train` that differ for this model, e.g. {hidden: 512}; validated like `train` itself.
    overrides: dict[str, Any] = Field(default_factory=dict)


class EnsembleParams(Section):
    """MEDUSA's stages 3-4 (medusa.ensemble.meta): the meta-classifier over the members' posteriors, and its soup."""
    #: Members of the ensemble ([] = every entry of `models`), in the meta-classifier's input order.
    members: list[str]
    #: Also evaluate the top-k members by dev balanced macro-F1 (paper: top-7 and top-5 of 14).
    top_k: list[int]
    #: Feed the members' attribute predictions in beside their posteriors (not the paper's: its meta-classifier
    #: reads the posteriors only). Attribute outputs are separate: they exist when mse_weight > 0.
    attributes_in: bool
    #: Beyond the paper: feed each member's linear-probe posteriors in beside the member's own, so that MEDUSA
    #: can always fall back on its best probe (off in the paper preset; Table 3 measures it either way).
    include_probes: bool
    hidden: int = Field(ge=0)       # 0: linear (the paper)
    #: The stage-3 form (medusa.ensemble.meta.STAGE3_FORMS): "paper", the paper's linear layer; "anchored" (beyond the
    #: paper), the same layer with the log of the members' mean posterior added to its logits, so that it starts
    #: at soft voting, its class weights penalised by an L2 weight chosen among `anchor_l2` or soft voting itself
    #: by `cv_folds`-fold cross-validation within dev. Table 3 scores the other form too, on every run.
    stage3: Literal["paper", "anchored"]
    anchor_l2: list[Annotated[float, Field(ge=0)]] = Field(min_length=1)
    cv_folds: int = Field(ge=2)
    epochs: int = Field(ge=1)       # a fixed number: dev is the meta-classifier's training set
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    ce_weight: float = Field(gt=0)
    mse_weight: float = Field(ge=0)  # > 0: attribute outputs, trained by eq. (1)'s MSE term; 0: class outputs only
    #: One meta-classifier per seed; the soup averages their weights (paper: 6 seeds).
    seeds: list[int] = Field(min_length=1)
    #: torch CPU threads of the stage (0 = torch's default, the machine's cores). The meta-classifiers' bits change
    #: with the thread count, so it is fixed, as train.threads is; one thread also lets the stage run beside a
    #: training stage without the two fighting over the cores (medusa repro runs them side by side).
    threads: int = Field(default=1, ge=0)


#: Table 2's first row: the full DeepSER (the ensemble member itself), which every variant is compared with.
REFERENCE_VARIANT = "deepser"


class AblateParams(Section):
    """Table 2 (medusa.reporting.ablation): the same training with one component switched off, per model and seed."""
    #: Entries of `models` (paper: m02, m08, m09, m13), each run with its own seed. Models that differ only by
    #: seed (same encoders and overrides) are one configuration of Table 2: mean +- std over their seeds.
    models: list[str] = Field(min_length=1)
    #: name -> keys of `train` to change, e.g. no_mixup: {mixup_p: 0.0}. The reference is the member itself.
    variants: dict[str, dict[str, Any]] = Field(min_length=1)


class SlurmParams(Section):
    """What each SLURM job asks for (parallel.engine slurm or submitit-local; submitit's executor parameters)."""
    partition: str                      # "" = the cluster's default partition
    account: str                        # "" = the user's default account
    gpus_per_node: int = Field(ge=0)    # GPUs of a node the ranks of one job share (one per rank); 0 = CPU jobs
    cpus_per_task: int = Field(ge=1)
    mem_gb: int = Field(ge=1)           # memory per node
    time_min: int = Field(ge=1)         # a job's time limit; a job stopped by it (or preempted) is requeued
    folder: str                         # submitit's job files and logs, e.g. work/slurm


class ParallelParams(Section):
    """How the work spreads over devices and machines. No output depends on it (tests/test_ranks.py,
    tests/test_repro.py, tests/test_slurm.py), so no stage lists it among its params in dvc.yaml: changing it reruns
    nothing."""
    #: transcription and extraction: processes (ranks, medusa.features.ranks), each a contiguous block of the batch
    #: plan on its own device (GPU i of its node, or the CPU with the stage's `threads`); rank 0 merges
    ranks: int = Field(ge=1)
    #: `medusa repro`: training stages (train@, ablate@) run side by side, one per device (GPU, or CPU thread)
    jobs: int = Field(ge=1)
    #: torchrun: the ranks are processes of this machine (torch's elastic launcher) and the training stages
    #: `medusa repro`'s processes; slurm: the ranks are the tasks of one SLURM job and the training stages a job
    #: array, submitted through submitit with `slurm`'s resources; submitit-local: the same jobs on this machine
    #: (submitit's local executor: the SLURM path without a cluster, for tests)
    engine: Literal["torchrun", "slurm", "submitit-local"]
    slurm: SlurmParams


class ReportParams(Section):
    """The summary report (notebook 06_ablations): tables, figures, findings."""
    bootstrap: int = Field(ge=100)   # resamples of the test utterances for every 95 % interval
    seed: int


class Params(Section):
    demo_corpus: DemoCorpusParams
    prepare: PrepareParams
    transcribe: TranscribeParams
    encoders: dict[str, EncoderParams]
    extract: ExtractParams
    train: TrainParams
    probe: ProbeParams
    models: dict[str, ModelParams] = Field(min_length=1)
    ensemble: EnsembleParams
    ablate: AblateParams
    parallel: ParallelParams
    report: ReportParams

    @model_validator(mode="after")
    def _cross_references(self) -> "Params":
        """Every encoder a model or a pooling factor names must exist; every model's overrides must validate."""
        known = ", ".join(self.encoders)
        problems = [f"train.pool.{key}: no encoder {key!r} in `encoders` (have: {known})"
                    for key in self.train.pool if key not in self.encoders]
        for name, model in self.models.items():
            problems += [f"models.{name}.encoders: no encoder {key!r} in `encoders` (have: {known})"
                         for key in model.encoders if key not in self.encoders]
            if len(set(model.encoders)) != len(model.encoders):
                problems.append(f"models.{name}.encoders: an encoder is listed twice: {model.encoders}")
            try:
                resolve_train(self.train, model.overrides)
            except ParamsError as e:
                problems.append(f"models.{name}.overrides: {e}")
        unknown = [m for m in self.ensemble.members if m not in self.models]
        problems += [f"ensemble.members: no model {m!r} in `models` (have: {', '.join(self.models)})" for m in unknown]
        size = len(self.ensemble.members or self.models)
        problems += [f"ensemble.top_k: {k} is not in 1..{size} (the ensemble's size)"
                     for k in self.ensemble.top_k if not 1 <= k <= size]
        problems += self._ablation_problems()
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    def _ablation_problems(self) -> list[str]:
        ablate, problems = self.ablate, []
        problems += [f"ablate.models: no model {m!r} in `models` (have: {', '.join(self.models)})"
                     for m in ablate.models if m not in self.models]
        if REFERENCE_VARIANT in ablate.variants:
            problems.append(f"ablate.variants.{REFERENCE_VARIANT}: reserved for the reference (the trained member "
                            "of `models` itself); name the variant otherwise")
        for name, switch in ablate.variants.items():
            if not name.replace("_", "").isalnum() or not name.isascii():
                problems.append(f"ablate.variants.{name}: use letters, digits and _ only (it names a DVC stage)")
                continue
            for model in (m for m in ablate.models if m in self.models):
                try:
                    resolve_train(resolve_train(self.train, self.models[model].overrides), switch)
                except ParamsError as e:
                    problems.append(f"ablate.variants.{name} (on model {model}): {e}")
                    break
        return problems


def resolve_train(train: TrainParams, overrides: dict[str, Any]) -> TrainParams:
    """`train` with `overrides` merged in key by key (merge_overrides, the presets' rule: `{pool: {whisper: 5}}`
    changes Whisper's pooling and keeps the other encoders'), validated like `train` (one model's settings, or an
    ablation variant)."""
    try:
        return TrainParams.model_validate(merge_overrides(train.model_dump(), overrides, source="overrides"))
    except ValidationError as e:
        raise ParamsError("; ".join(_describe(err) for err in e.errors())) from None


_TYPE_WORDS = {"int_type": "int", "float_type": "float", "string_type": "str", "bool_type": "bool",
               "list_type": "list", "dict_type": "mapping", "model_type": "mapping"}


def _describe(err: dict[str, Any]) -> str:
    path = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    if kind == "missing":
        return f"{path}: missing key"
    if kind == "extra_forbidden":
        return f"{path}: unknown key"
    got = err.get("input")
    if kind == "value_error":  # raised by a validator: its message names the keys itself
        message = err["msg"].removeprefix("Value error, ")
        return f"{path}: {message}" if path else message
    if kind in _TYPE_WORDS:
        hint = _float_hint(got) if kind == "float_type" and isinstance(got, str) else None
        return f"{path}: expected {_TYPE_WORDS[kind]}, got {type(got).__name__} {got!r}" + (f" ({hint})" if hint
                                                                                               else "")
    return f"{path}: {err['msg']} (got {got!r})"


def _float_hint(text: str) -> str | None:
    """How to write a float that YAML read as text, or None if it is no number. YAML 1.1 (PyYAML) reads a float
    only with a dot, and an exponent only with its sign: `1e-3` and `1.0e3` are text, `1.0e-3` and `0.001` are
    floats (and a quoted number is text)."""
    number = text.strip().replace("_", "")
    try:
        if not math.isfinite(float(number)):
            return None
        plain = format(Decimal(number), "f")
    except (ValueError, InvalidOperation):
        return None
    plain = plain if "." in plain else plain + ".0"
    mantissa, e, exponent = number.lower().partition("e")
    if not e:
        return f"YAML reads a quoted number as text: write {plain} without quotes"
    mantissa = mantissa if "." in mantissa else mantissa + ".0"
    exponent = exponent if exponent[:1] in "+-" else "+" + exponent
    return (f"YAML reads {text} as text, a float needs a dot and a signed exponent: write it as "
            f"{mantissa}e{exponent} or {plain}")


def validate_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate a params mapping; raise ParamsError listing every bad key path, one per line: the first line is
    a whole message by itself (`<file>: <key>: <what is wrong> (N more below)`), the others follow indented."""
    if raw is None:
        raise ParamsError(f"{source}: the file is empty (copy params.yaml or a preset of configs/ and edit it)")
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        # a cross-reference validator reports several problems in one message, one per line
        problems = [line.strip() for err in e.errors() for line in _describe(err).splitlines() if line.strip()]
        more = f" ({len(problems) - 1} more below)" if len(problems) > 1 else ""
        raise ParamsError("\n  ".join([f"{source}: {problems[0]}{more}", *problems[1:]])) from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """params.yaml (or a preset) read by `read_yaml` and validated by `validate_params`."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found (run from the repository root, or pass its path)")
    return validate_params(read_yaml(path), source=str(path))


def merge_overrides(base: dict[str, Any], override: dict[str, Any] | None, source: str = "override") -> dict[str, Any]:
    """`base` with `override` merged in key by key: a mapping merges into the mapping it replaces (keys the base
    lacks are added: `train.pool` or `models` take new entries), any other value (a list, a number, a string)
    replaces the base's. A misspelt setting is not caught here but by `validate_params` on the result."""
    def merge(b: Any, o: Any, path: str) -> Any:
        if not isinstance(o, dict):
            return o
        if not isinstance(b, dict):
            raise ParamsError(f"{source}: {path or 'top level'}: the base value is not a mapping, cannot merge "
                              f"the mapping {o!r} into it")
        out = dict(b)
        for key, value in o.items():
            where = f"{path}.{key}" if path else str(key)
            out[key] = merge(b[key], value, where) if key in b else value
        return out

    return merge(base, override or {}, "")

"""Where stages read and write, relative to the repository root (the one place these names live)."""
from pathlib import Path

WORK = Path("work")
MANIFEST = WORK / "manifest.parquet"
#: Corpus audio converted to 16 kHz mono by prepare (files already in that form are read where they are).
AUDIO_CACHE = WORK / "audio"
REPORTS = Path("reports")
METRICS = REPORTS / "metrics"
FIGURES = REPORTS / "figures"
TRANSCRIPTS = WORK / "transcripts.parquet"
FEATURES = WORK / "features"
#: Converted model checkpoints (e.g. the demo Whisper); safe to delete, rebuilt on demand.
CACHE = WORK / "cache"


def feature_store(encoder_key: str) -> Path:
    return FEATURES / encoder_key
#: One folder per trained DeepSER of the ensemble (medusa.model.members).
MODELS = WORK / "models"


def model_dir(name: str) -> Path:
    return MODELS / name


def model_checkpoint(name: str) -> Path:
    """Per-epoch training state, beside the model folder (DVC deletes a stage's outputs before it reruns,
    so the checkpoint must live outside them to survive an interrupted run); removed once training ends."""
    return MODELS / f"{name}.checkpoint.pt"
#: The ensemble stage: the soup's posteriors and the members' table.
ENSEMBLE = WORK / "ensemble"
#: Everything needed to go from audio to probabilities (medusa.serving.bundle).
BUNDLE = WORK / "bundle"
#: The challenge's submission file (FileName,EmoClass) for the blind split, from the soup's posteriors.
SUBMISSION = WORK / "submission.csv"
#: Table 2's runs: one folder per variant, one member folder per (model, seed) in it (medusa.reporting.ablation).
ABLATIONS = WORK / "ablations"
#: The summary report's tables (Markdown, CSV, LaTeX).
TABLES = REPORTS / "tables"
#: Per-model views of the feature stores (medusa.pipeline.inputs): what each train@ and ablate@ stage reads.
INPUTS = WORK / "inputs"
ABLATION_INPUTS = INPUTS / "ablation"


def model_inputs(name: str) -> Path:
    return INPUTS / "models" / name

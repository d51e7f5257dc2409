"""Where stages read and write, relative to the repository root (the one place these names live)."""
from pathlib import Path

WORK = Path("work")
MANIFEST = WORK / "manifest.parquet"
REPORTS = Path("reports")
METRICS = REPORTS / "metrics"
FIGURES = REPORTS / "figures"
TRANSCRIPTS = WORK / "transcripts.parquet"
FEATURES = WORK / "features"
#: Converted model checkpoints (e.g. the demo Whisper); safe to delete, rebuilt on demand.
CACHE = WORK / "cache"


def feature_store(encoder_key: str) -> Path:
    return FEATURES / encoder_key

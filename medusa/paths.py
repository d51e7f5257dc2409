"""Where stages read and write, relative to the repository root (the one place these names live)."""
from pathlib import Path

WORK = Path("work")
MANIFEST = WORK / "manifest.parquet"
REPORTS = Path("reports")
METRICS = REPORTS / "metrics"
FIGURES = REPORTS / "figures"

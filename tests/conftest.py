import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_analytics(monkeypatch):
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail at once instead of retrying


@pytest.fixture(scope="module")
def bench(request):
    """The script benchmarks/<BENCHMARK>.py as a module (the benchmarks folder is not a package); the test module
    names it in a module-level BENCHMARK."""
    name = f"benchmark_{request.module.BENCHMARK}"
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{request.module.BENCHMARK}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(name, None)

"""MEDUSA speech emotion recognition. `from medusa import Predictor` (medusa.serving.predict) is imported on first use, so
that `import medusa` stays light (no torch)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medusa.serving.predict import Predictor

_LAZY = {"Predictor": "medusa.serving.predict"}

__all__ = ["Predictor"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medusa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])

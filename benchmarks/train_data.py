"""What benchmarks/train.py (and gpu.py's training part) trains on: the paper's frame-level features, the model and
batch sizes, and synthetic utterances written once in both ways' formats.

Kept apart from the timing so that gpu.py's budget can cost a feature mix (dims, frame rates) without the training
loop, and so that train.py reads as the comparison of the two ways.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medusa.features.store.writer import FeatureStoreWriter
from medusa.labels import ATTRIBUTES, CODES, SOFT_TARGET_COLUMNS

MIN_S, MAX_S = 2.75, 11.0           # MSP-Podcast-like segment durations (as in benchmarks/extract.py)
PAPER_AUDIO_FPS = 50                # WavLM, HuBERT and the Whisper encoder: one frame per 20 ms
TOKENS_PER_S = 3.0                  # RoBERTa/ModernBERT tokens per second of speech (~2.7 words/s x 1.1-1.3)
SPECIAL_TOKENS = 2                  # <s> ... </s> (or [CLS] ... [SEP]) around every transcript


@dataclass(frozen=True)
class Feature:
    """One frame-level feature of the paper: its encoder, width and time resolution."""
    key: str
    name: str
    dim: int
    kind: str                        # audio: frames/s; text: tokens/s

    def frames(self, duration_s: float, audio_fps: float) -> int:
        if self.kind == "audio":
            return max(1, int(duration_s * audio_fps))
        return int(round(TOKENS_PER_S * duration_s)) + SPECIAL_TOKENS


FEATURES = {f.key: f for f in (
    Feature("wavlm", "WavLM-large", 1024, "audio"),
    Feature("hubert", "HuBERT-large", 1024, "audio"),
    Feature("whisper", "Whisper-large-v3 encoder", 1280, "audio"),
    Feature("roberta", "RoBERTa-large", 1024, "text"),
    Feature("modernbert", "ModernBERT-large", 1024, "text"),
)}
# Two of Table 1's feature mixes (configs/paper.yaml): model 2 (WavLM + HuBERT + RoBERTa) and model 14 (the
# Whisper-large-v3 encoder + WavLM + ModernBERT), whose 1280-d Whisper frames make the widest input.
TABLE1_MODELS = {"wavlm+hubert+roberta": "Table 1's model 2", "whisper+wavlm+modernbert": "Table 1's model 14"}


@dataclass(frozen=True)
class Size:
    hidden: int
    heads: int
    ff_mult: int
    layers: int
    batch_size: int
    utterances: int
    steps: int
    audio_fps: float


SIZES = {
    # The paper's DeepSER and batch at full frame rates; 640 utterances so that length buckets are as tight as
    # a real epoch's would roughly be for a few dozen steps.
    "full": Size(hidden=1024, heads=16, ff_mult=4, layers=2, batch_size=16, utterances=640, steps=30,
                 audio_fps=PAPER_AUDIO_FPS),
    # The same structure at a CPU's scale: at 50 frames/s one authors' step of the 256-wide model takes ~1 min
    # on one core (the fusion ENCs attend over ~2,300 frames), so audio comes at 10 frames/s (50 pooled by 5).
    "small": Size(hidden=256, heads=4, ff_mult=4, layers=2, batch_size=16, utterances=128, steps=12,
                  audio_fps=10),
}


# ----------------------------------------------------------------------------------------- synthetic corpus


def make_rows(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """n utterances as FeatureDataset wants them (utt_id, label, p_A..p_N, arousal, valence, dominance), and
    their durations in seconds (uniform in [2.75, 11]). All 8 classes, as DeepSERConfig's default n_classes."""
    rng = np.random.default_rng(seed)
    durations = rng.uniform(MIN_S, MAX_S, n)
    soft = rng.dirichlet(np.full(len(CODES), 0.5), n)  # ambiguous votes, as soft targets are
    attrs = rng.uniform(1.0, 7.0, (n, len(ATTRIBUTES)))
    rows = pd.DataFrame({"utt_id": [f"utt{i:05d}" for i in range(n)],
                         "label": np.asarray(CODES)[soft.argmax(1)]})
    rows[list(SOFT_TARGET_COLUMNS)] = soft
    rows[list(ATTRIBUTES)] = attrs
    return rows, durations


def write_features(work: Path, rows: pd.DataFrame, durations: np.ndarray, features: list[Feature],
                   audio_fps: float, seed: int) -> dict[str, dict[str, int]]:
    """Write the same random frames in both formats: a float16 feature store per feature (ours) and one float32
    .npy per utterance and feature (the authors'). Returns the frame count of every (feature, utt_id)."""
    lengths: dict[str, dict[str, int]] = {}
    for k, feat in enumerate(features):
        rng = np.random.default_rng([seed, k])
        npy_dir = work / "npy" / feat.key
        npy_dir.mkdir(parents=True, exist_ok=True)
        lengths[feat.key] = {}
        with FeatureStoreWriter(work / "stores" / feat.key, feat.dim, {"feature": feat.key}) as writer:
            for utt, duration in zip(rows["utt_id"], durations):
                x = rng.standard_normal((feat.frames(duration, audio_fps), feat.dim), dtype=np.float32)
                writer.add(utt, x)
                np.save(npy_dir / f"{utt}.npy", x)
                lengths[feat.key][utt] = len(x)
    return lengths

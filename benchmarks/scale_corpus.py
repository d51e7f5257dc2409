"""The synthetic MSP-Podcast corpus of benchmarks/scale.py and its feature stores: what the timed steps run on.

The corpus follows the MSP-Podcast layout (labels, per-annotator votes, transcripts, sparse wav files) so that the
pipeline's own `prepare_corpus` reads it as it reads the real one; the stores have the real frame counts at a small
dim.
"""
from __future__ import annotations

import csv
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medusa.config.params import Params
from medusa.features.batches import length_batches
from medusa.features.store.reader import DTYPE
from medusa.features.store.writer import FeatureStoreWriter
from medusa.labels import CODES, EMOTION_OF

CPU = torch.device("cpu")
SAMPLE_RATE = 16000

# ------------------------------------------------------------------------------------- the simulated corpus
#: Clip durations: log-normal with a mean of ~6 s, clipped to 2-12 s (MSP-Podcast's segments).
DURATION_MEDIAN_S, DURATION_SIGMA, DURATION_RANGE_S = 5.6, 0.4, (2.0, 12.0)
WORDS_PER_S, TOKENS_PER_WORD, SPECIAL_TOKENS = 2.7, 1.3, 2
AUDIO_FPS = 50                       # WavLM, HuBERT and the Whisper encoder: one frame per 20 ms
#: Consensus labels (MSP-Podcast-like imbalance; O: Other wins, X: no agreement).
CONSENSUS_PRIOR = {"N": 0.29, "H": 0.16, "A": 0.07, "S": 0.07, "C": 0.05, "U": 0.03, "D": 0.02, "F": 0.015,
                   "O": 0.02, "X": 0.275}
#: Split_Set shares of the labelled audio; the rest of the audio (blind) has no label row, like Test3.
SPLIT_SHARES = {"Train": 0.70, "Development": 0.22}
BLIND_SHARE = 0.08
UTTERANCES_PER_SPEAKER = 40
ANNOTATORS = (5, 7)
OTHER_WORDS = ("Bored", "Curious", "Tired", "Concerned")
VOCABULARY = tuple(f"w{i}" for i in range(800))

# ------------------------------------------------------------------------------------------- the features
#: key -> (model, dim at the paper's scale, kind). Whisper's encoder gives 50 frames/s of the clip's own length
#: (whisper_pad_seconds 0); ModernBERT is counted at RoBERTa's tokens per word.
FULL_DIMS = {"wavlm": ("WavLM-large", 1024, "audio"), "hubert": ("HuBERT-large", 1024, "audio"),
             "whisper": ("Whisper-large-v3 encoder", 1280, "audio"), "roberta": ("RoBERTa-large", 1024, "text"),
             "modernbert": ("ModernBERT-large", 1024, "text")}
MODEL = ("wavlm", "hubert", "roberta")   # Table 1's model 2 (m02)
MODEL_NAME = "m02"
POOL_SPARE = 4096                        # random frames beyond the longest utterance's, for random offsets


# ------------------------------------------------------------------------------------- synthetic corpus


def sparse_wav(path: Path, n_samples: int) -> None:
    """A 16 kHz mono PCM16 wav of n_samples whose data is a hole: a real header, the full file size, no blocks."""
    data = 2 * n_samples
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, 1, SAMPLE_RATE,
                         2 * SAMPLE_RATE, 2, 16, b"data", data)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + data)


def durations(n: int, rng: np.random.Generator) -> np.ndarray:
    """Clip durations in seconds: log-normal (median 5.6 s, sigma 0.4: mean ~6 s), clipped to 2-12 s."""
    return np.clip(rng.lognormal(math.log(DURATION_MEDIAN_S), DURATION_SIGMA, n), *DURATION_RANGE_S)


def _votes(label: str, n: int, rng: np.random.Generator) -> list[str]:
    """Primary votes (codes, or O) of n annotators whose plurality is `label` (X: a tie between two classes)."""
    others = [c for c in CODES if c != label]
    if label == "X":
        a, b, *rest = (str(c) for c in rng.permutation(list(CODES)))
        return [a, a, b, b, *rest[: n - 4]]  # every other code once: the top two tie
    top = n // 2 + 1
    return [label] * top + [str(c) for c in rng.choice(others + ["O"], n - top)]


def write_corpus(root: Path, n: int, seed: int) -> dict[str, float]:
    """An MSP-Podcast-layout corpus of n utterances (sparse wav files); returns a few of its figures."""
    rng = np.random.default_rng([seed, n])
    for sub in ("Audios", "Labels", "Transcripts"):
        (root / sub).mkdir(parents=True)
    n_blind = round(BLIND_SHARE * n)
    n_labelled = n - n_blind
    n_speakers = max(24, n_labelled // UTTERANCES_PER_SPEAKER)
    share = rng.lognormal(0.0, 0.8, n_speakers)  # podcasts are uneven: some speakers talk much more
    per_speaker = rng.multinomial(n_labelled, share / share.sum())
    # whole speakers to Train until ~70 % of the labelled clips, the rest to Development (speaker-disjoint)
    cut = SPLIT_SHARES["Train"] / sum(SPLIT_SHARES.values())
    cumulative = np.cumsum(per_speaker) / n_labelled
    split_of_speaker = np.where(cumulative <= cut, "Train", "Development")
    split_of_speaker[0], split_of_speaker[-1] = "Train", "Development"
    codes = list(CONSENSUS_PRIOR)
    prior = np.asarray([CONSENSUS_PRIOR[c] for c in codes])
    dur = durations(n, rng)
    words = np.maximum(1, np.rint(WORDS_PER_S * dur * rng.uniform(0.8, 1.2, n))).astype(int)
    labels = rng.choice(codes, n_labelled, p=prior / prior.sum())
    names = []
    with open(root / "Labels" / "labels_consensus.csv", "w", newline="") as fc, \
            open(root / "Labels" / "labels_detailed.csv", "w", newline="") as fd:
        consensus, detailed = csv.writer(fc, lineterminator="\n"), csv.writer(fd, quoting=csv.QUOTE_ALL,
                                                                            lineterminator="\n")
        consensus.writerow(["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"])
        detailed.writerow(["FileName", "EmoDetail"])
        i = 0
        for s, count in enumerate(per_speaker):
            for k in range(count):
                name = f"MSP-PODCAST_{s + 1:04d}_{k + 1:04d}.wav"
                names.append(name)
                votes = _votes(str(labels[i]), int(rng.integers(ANNOTATORS[0], ANNOTATORS[1] + 1)), rng)
                avd = rng.integers(1, 8, (len(votes), 3))
                for w, (vote, (a, v, d)) in enumerate(zip(votes, avd)):
                    primary = f"Other-{OTHER_WORDS[w % len(OTHER_WORDS)]}" if vote == "O" else EMOTION_OF[vote]
                    detailed.writerow([name, f"WORKER{int(rng.integers(1, 3000)):05d}{w}; {primary}; ; "
                                             f"A:{a:.1f}; V:{v:.1f}; D:{d:.1f};"])
                mean = avd.mean(0)
                consensus.writerow([name, labels[i], f"{mean[0]:.4f}", f"{mean[1]:.4f}", f"{mean[2]:.4f}", s + 1,
                                    "Female" if s % 2 else "Male", split_of_speaker[s]])
                i += 1
    names += [f"MSP-PODCAST_test3_{b + 1:06d}.wav" for b in range(n_blind)]
    vocabulary = np.asarray(VOCABULARY)
    for name, seconds, count in zip(names, dur, words):
        sparse_wav(root / "Audios" / name, int(round(seconds * SAMPLE_RATE)))
        text = " ".join(vocabulary[rng.integers(0, len(vocabulary), count)])
        (root / "Transcripts" / (name[:-4] + ".txt")).write_text(text + "\n", encoding="utf-8")
    return {"hours": float(dur.sum() / 3600), "speakers": n_speakers, "blind": n_blind}


# ------------------------------------------------------------------------------------------ feature stores


def audio_frames(duration_s: np.ndarray) -> np.ndarray:
    return np.maximum(1, (np.asarray(duration_s) * AUDIO_FPS).astype(np.int64))


def text_tokens(texts: pd.Series) -> np.ndarray:
    words = texts.fillna("").str.split().str.len().to_numpy()
    return np.rint(TOKENS_PER_WORD * words).astype(np.int64) + SPECIAL_TOKENS


def store_bytes(frames: int, dim: int) -> int:
    """Size of a store's frames file: frames x dim x 2 bytes (float16); index and meta are a few MB at most."""
    return int(frames) * int(dim) * DTYPE.itemsize


@dataclass
class StorePlan:
    """What extraction would write for one encoder: the work list (utt_id order) and its batches."""
    key: str
    ids: list[str]
    frames: np.ndarray                 # per utterance, in `ids` order
    batches: list[list[int]]
    offsets: np.ndarray                # where each utterance's random frames start in the frame pool


def plan_store(key: str, items: pd.DataFrame, params: Params, rng: np.random.Generator) -> StorePlan:
    """medusa.features.extract's plan for the encoder `key`: items in utt_id order, audio batched by duration (batch_size,
    batch_seconds of the preset), text by transcript length (as plan_batches)."""
    items = items.sort_values("utt_id").reset_index(drop=True)
    ids = list(items["utt_id"])
    enc = params.encoders[key]
    if FULL_DIMS[key][2] == "audio":
        frames = audio_frames(items["duration_s"])
        batches = length_batches(ids, [float(d) for d in items["duration_s"]], enc.batch_size, enc.batch_seconds)
    else:
        frames = text_tokens(items["ref_text"])
        batches = length_batches(ids, [len(t) for t in items["ref_text"].fillna("")], enc.batch_size)
    offsets = rng.integers(0, POOL_SPARE + 1, len(ids))
    return StorePlan(key, ids, frames, batches, offsets)


def write_store(root: Path, plan: StorePlan, pool: np.ndarray) -> None:
    """The I/O of medusa.features.extract.extract_to_store with the encoder left out: add each batch's utterances (float32
    frames, made float16 by the writer), flush after every batch."""
    with FeatureStoreWriter(root, pool.shape[1], {"family": plan.key, "model": "synthetic"}) as writer:
        for batch in plan.batches:
            for i in batch:
                writer.add(plan.ids[i], pool[plan.offsets[i]:plan.offsets[i] + plan.frames[i]])
            writer.flush()


def frame_pool(dim: int, longest: int, seed: int) -> np.ndarray:
    """Random N(0, 1) float32 frames that utterances take slices of (generated once, not timed): each takes its
    frames from a random offset in [0, POOL_SPARE]."""
    return np.random.default_rng([seed, dim]).standard_normal((longest + POOL_SPARE, dim), dtype=np.float32)

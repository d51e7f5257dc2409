"""Speech synthesis with the espeak-ng library bundled in the `espeakng-loader` wheel, through ctypes.

Written here rather than taken from a wrapper package because the demo corpus needs two things the PyPI
wrappers do not give together: the exact pinned library build (byte-identical audio) and per-utterance
prosody control (rate, volume, pitch, pitch range, word gap, SSML pauses) with the samples returned in memory.

espeak-ng keeps state between calls in one process, so the same text synthesized twice in one process can
differ; a fixed sequence of calls in a fresh process is byte-identical every time. `synthesize_batch` therefore
always runs in a fresh interpreter (`python -m medusa.data.corpora.espeak`, not multiprocessing, which would
re-import the caller's unguarded __main__).
"""
from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ESPEAK_RATE_HZ = 22050
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8, _SSML = 1, 0x10
_RATE, _VOLUME, _PITCH, _RANGE, _WORDGAP = 1, 2, 3, 4, 7


@dataclass(frozen=True)
class SynthRequest:
    """One utterance: SSML-free text with optional `<break time="Nms"/>` tags, a voice and prosody settings."""
    text: str
    voice: str          # e.g. "en+m3", "en+f2"
    rate_wpm: int       # 80..450
    volume: int         # 0..200
    pitch: int          # 0..100
    pitch_range: int    # 0..100
    word_gap: int       # extra pause between words, units of 10 ms


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Engine:
    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if rate != ESPEAK_RATE_HZ:
            raise RuntimeError(f"espeak-ng initialisation failed or gave an unexpected rate ({rate} Hz)")
        self._chunks: list[np.ndarray] = []

        def collect(wav, n, _events):  # called by espeak-ng with each block of samples
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = _CALLBACK(collect)  # keep a reference: espeak-ng holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def synth(self, req: SynthRequest) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(req.voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {req.voice!r}")
        for key, value in ((_RATE, req.rate_wpm), (_VOLUME, req.volume), (_PITCH, req.pitch),
                           (_RANGE, req.pitch_range), (_WORDGAP, req.word_gap)):
            self.lib.espeak_SetParameter(key, int(value), 0)
        self._chunks = []
        text = f"<speak>{req.text}</speak>".encode() + b"\0"
        err = self.lib.espeak_Synth(text, len(text), 0, 0, 0, _CHARS_UTF8 | _SSML, None, None)
        if err != 0:
            raise RuntimeError(f"espeak-ng failed (error {err}) on {req.text!r}")
        self.lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)


def _synthesize_in_this_process(requests: list[SynthRequest]) -> list[np.ndarray]:
    engine = _Engine()
    return [engine.synth(r) for r in requests]


def synthesize_batch(requests: list[SynthRequest]) -> list[np.ndarray]:
    """Synthesize in order, in a fresh process; returns int16 arrays at ESPEAK_RATE_HZ (22,050 Hz)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audio.npz"
        proc = subprocess.run([sys.executable, "-m", "medusa.data.corpora.espeak", str(out)],
                              input=json.dumps([asdict(r) for r in requests]), text=True, capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"espeak-ng synthesis process failed (exit {proc.returncode}):\n{proc.stderr}")
        with np.load(out) as z:
            return [z[f"a{i}"] for i in range(len(requests))]


if __name__ == "__main__":  # worker: JSON requests on stdin -> npz of int16 arrays a0, a1, ...
    reqs = [SynthRequest(**r) for r in json.load(sys.stdin)]
    np.savez(sys.argv[1], **{f"a{i}": a for i, a in enumerate(_synthesize_in_this_process(reqs))})

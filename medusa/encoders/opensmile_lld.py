"""openSMILE low-level descriptors (eGeMAPS v02: 25 per frame; ComParE 2016: 65), 100 frames per second."""
from __future__ import annotations

import numpy as np

from medusa.encoders.base import Encoder

FEATURE_SETS = {"eGeMAPSv02": 25, "ComParE_2016": 65}


class OpenSmileEncoder(Encoder):
    kind = "audio"
    frame_rate = 100.0

    def __init__(self, feature_set: str = "eGeMAPSv02") -> None:
        import opensmile

        if feature_set not in FEATURE_SETS:
            raise ValueError(f"unknown openSMILE feature set {feature_set!r}; one of {', '.join(FEATURE_SETS)}")
        self.smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, feature_set),
                                     feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
        self.feature_set = feature_set
        self.dim = FEATURE_SETS[feature_set]

    def encode(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for audio in batch:
            frames = self.smile.process_signal(audio, 16000).to_numpy(dtype=np.float32)
            out.append(frames if len(frames) else np.zeros((1, self.dim), np.float32))
        return out

    def spec(self) -> dict:
        return {**super().spec(), "family": "opensmile", "feature_set": self.feature_set}

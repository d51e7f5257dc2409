"""Bundle parts the bundle tests write by hand (test_bundle, test_bundle_encoders, test_bundle_probes; test_predict
and test_submission take them through test_bundle): member folders of tiny random DeepSER models, a random
meta-classifier, and the eGeMAPS encoder's store meta and params."""
import json

import torch
from meta_config import meta_config
from safetensors.torch import save_file
from tiny_models import deepser_config, train_config

from medusa.ensemble.meta import MetaClassifier
from medusa.labels import CODES
from medusa.model.deepser import DeepSER

EGEMAPS_STORE = {"family": "opensmile", "feature_set": "eGeMAPSv02", "dim": 25, "kind": "audio", "frame_rate": 100.0}
EGEMAPS = {"family": "egemaps", "model": "eGeMAPSv02", "layers": [], "batch_size": 16, "batch_seconds": 60.0}


def write_member(root, name, encoders: dict[str, int], pools, stores: dict[str, dict], seed: int,
                 fusion: str = "deep", classes: tuple[str, ...] = CODES) -> tuple:
    """A member folder as members.train_member lays it out (model.safetensors + config.json), random weights,
    one class output per class of `classes` (the run's); the class head is scaled up so the probabilities
    depend clearly on the input."""
    torch.manual_seed(seed)
    cfg = deepser_config(tuple(encoders.values()), hidden=8, layers=2, heads=2, dropout=0.1, ff_mult=2,
                        fusion=fusion, n_classes=len(classes))
    model = DeepSER(cfg).eval()
    with torch.no_grad():
        model.class_head.weight.mul_(20)
        model.attribute_head.weight.mul_(5)
    folder = root / name
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    config = {"name": name, "encoders": list(encoders), "pools": list(pools), "one_hot": False, "device": "cpu",
              "deepser": cfg.to_dict(), "train": train_config(seed=seed).model_dump(), "classes": list(classes),
              "feature_stores": stores}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, model


def make_meta(n_models: int, use_attributes: bool, hidden: int = 0, seed: int = 0) -> MetaClassifier:
    torch.manual_seed(seed)
    meta = MetaClassifier(meta_config(n_models, attributes_in=use_attributes, attributes_out=use_attributes,
                                       hidden=hidden)).eval()
    with torch.no_grad():
        for p in meta.parameters():
            p.mul_(5)
    return meta


def score_files(bundle, paths, cache_dir="work/cache"):
    """The file rows of a loaded bundle's predictions for `paths`, each file scored whole as the ensemble stage's
    bundle check scores clips (medusa.serving.predict.Predictor, window = utterance_window)."""
    from pathlib import Path

    from medusa.serving.predict import Predictor

    with Predictor(bundle, Path(cache_dir)) as predictor:
        frame = predictor.predict_files(list(paths), predictor.utterance_window, progress=False)
    return frame[frame["level"] == "file"].reset_index(drop=True)

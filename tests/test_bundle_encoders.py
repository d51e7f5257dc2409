"""A bundle encoding audio itself: members over encoders whose frames depend on padding (a tiny Whisper, a
group-norm HuBERT) and eGeMAPS give the features the extract stage stored, whatever the clips' order; features
padded by other code are refused."""
import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from tiny_bundles import EGEMAPS, make_meta, score_files, write_member

from medusa.data.audio import load_audio
from medusa.labels import CODES, SOFT_TARGET_COLUMNS
from medusa.serving.bundle import BundleError, save_bundle
from medusa.serving.featurizer import Featurizer
from medusa.serving.inference import load_bundle


@pytest.fixture(scope="module")
def grid_bundle(tmp_path_factory):
    """Members over encoders whose frames depend on padding (a tiny random Whisper, a group-norm HuBERT used
    without a mask, as the base checkpoints are) and eGeMAPS, trained on stores made by the extract stage over
    nine wav files of 0.4-6.5 s; the bundle built from those stores' meta, as the bundle stage builds it."""
    import tiny_models

    from medusa.features.encoders import build_encoder
    from medusa.features.extract import extract_to_store
    from medusa.features.store.reader import FeatureStore

    root = tmp_path_factory.mktemp("grid")
    params = {"whisper": {"family": "whisper", "model": tiny_models.whisper_checkpoint(root), "layers": [-1],
                          "batch_size": 3, "batch_seconds": 20.0},
              "hubert": {"family": "hubert", "model": tiny_models.hf_audio(root, "hubert", "group"),
                         "layers": [-2, -1], "batch_size": 3, "batch_seconds": 20.0},
              "egemaps": EGEMAPS}
    rows = []
    for i, seconds in enumerate([0.4, 6.5, 1.2, 2.3, 2.9, 0.8, 4.1, 3.0, 1.7]):
        path = root / f"clip{i}.wav"
        sf.write(path, tiny_models.clip(seconds, 20 + i), 16000, subtype="PCM_16")
        rows.append({"utt_id": f"clip{i}", "path": str(path), "duration_s": sf.info(path).duration})
    items = pd.DataFrame(rows)
    stores = {}
    for key, e in params.items():
        enc = build_encoder(key, e["family"], e["model"], e["layers"], torch.device("cpu"), root / "cache")
        extract_to_store(enc, items, root / "features" / key, batch_size=e["batch_size"],
                         batch_seconds=e["batch_seconds"], num_workers=0, device=torch.device("cpu"))
        stores[key] = FeatureStore(root / "features" / key)
    metas = {k: dict(st.meta) for k, st in stores.items()}
    dirs = [write_member(root / "models", "m_all", {"whisper": 32, "hubert": 32, "egemaps": 25}, [5, 5, 10],
                         metas, seed=6)[0],
            write_member(root / "models", "m_wh", {"whisper": 32}, [2], {"whisper": metas["whisper"]}, seed=7,
                         fusion="late")[0]]
    out = save_bundle(root / "bundle", make_meta(2, use_attributes=False), dirs, params, None)
    return {"bundle": out, "items": items, "stores": stores, "cache": root / "cache"}


def test_predict_in_one_call_in_any_order_gives_the_stores_features(grid_bundle):
    """Several clips in one call, in any order: the features the extract stage stored (to float16 rounding: 2
    float16 steps), and the probabilities of those stored features (to 1e-3)."""
    items, stores = grid_bundle["items"], grid_bundle["stores"]
    bundle = load_bundle(grid_bundle["bundle"])
    featurizer = Featurizer(bundle, torch.device("cpu"), grid_bundle["cache"])
    encoders = json.loads((grid_bundle["bundle"] / "encoders.json").read_text())
    assert "whole seconds" in encoders["whisper"]["padding"] and encoders["hubert"]["versions"]["transformers"]
    audios = [load_audio(p) for p in items["path"]]
    for order in ([8, 1, 0, 4, 2, 7, 5, 3, 6], [3, 0, 6]):
        feats = featurizer.encode([audios[i] for i in order])
        for key, store in stores.items():
            for j, i in enumerate(order):
                stored = np.asarray(store[items.at[i, "utt_id"]], np.float32)
                np.testing.assert_allclose(feats[key][j].astype(np.float32), stored, rtol=2e-3, atol=1e-4,
                                           err_msg=f"{key} {items.at[i, 'utt_id']} at position {j}")
    order = [5, 1, 7, 0, 2]
    frame = score_files(bundle, [items.at[i, "path"] for i in order], grid_bundle["cache"])
    stored = {k: [np.asarray(st[items.at[i, "utt_id"]]) for i in order] for k, st in stores.items()}
    expected, _ = bundle.predict_features(stored)
    np.testing.assert_allclose(frame[list(SOFT_TARGET_COLUMNS)].to_numpy(), expected, rtol=0, atol=1e-3)
    assert list(frame["predicted"]) == list(np.asarray(CODES)[expected.argmax(1)])


def test_a_bundle_refuses_features_padded_by_other_code(grid_bundle, tmp_path):
    """A bundle whose stores were padded by another rule (e.g. made before the whole-second grid) is refused
    when it would encode: its members never saw such features."""
    bundle = load_bundle(grid_bundle["bundle"])
    bundle.encoders["whisper"]["padding"] = "batches padded to their longest clip"
    with pytest.raises(BundleError, match=r"encoder 'whisper': the members were trained on features padded as "
                                          r"'batches padded to their longest clip'"):
        Featurizer(bundle, torch.device("cpu"), grid_bundle["cache"]).encode(
            [load_audio(grid_bundle["items"].at[0, "path"])])

"""A Predictor builds each encoder and the Whisper ASR once over many calls (one Whisper serving both the ASR and
the Whisper encoder that name the same weights), frees them on close(), and keeps at most one with
resident="one", with the same rows either way."""
import numpy as np
import pytest
import soundfile as sf
import tiny_models
from tiny_bundles import EGEMAPS, EGEMAPS_STORE, make_meta, write_member

import medusa.features.encoders.whisper as whisper_encoder
from medusa.labels import SOFT_TARGET_COLUMNS
from medusa.serving.bundle import save_bundle
from medusa.serving.featurizer import ASR, FeaturizerError
from medusa.serving.predict import Predictor

SR = 16000
VALUES = [*SOFT_TARGET_COLUMNS, "arousal", "valence", "dominance"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A bundle whose members read a tiny Whisper encoder, eGeMAPS and a tiny MiniLM over the transcripts of an
    ASR that names the same tiny Whisper checkpoint; six short wav files."""
    root = tmp_path_factory.mktemp("featurizer")
    whisper = tiny_models.whisper_checkpoint(root)
    minilm = tiny_models.hf_text(root, "minilm")
    encoders = {"whisper": {"family": "whisper", "model": whisper, "layers": [-1], "batch_size": 4,
                            "batch_seconds": 20.0},
                "egemaps": EGEMAPS,
                "text": {"family": "minilm", "model": minilm, "layers": [-1], "batch_size": 4, "batch_seconds": 20.0}}
    asr = {"model": whisper, "language": "en", "batch_size": 4, "pad_seconds": 0.0, "beam_size": 1,
           "num_workers": 0, "device": "cpu", "compare_subset": 0}
    stores = {"whisper": {"family": "whisper", "model": whisper, "layers": [-1], "dim": 32},
              "egemaps": EGEMAPS_STORE, "text": {"family": "minilm", "model": minilm, "layers": [-1], "dim": 32}}
    dirs = [write_member(root / "models", "m_audio", {"whisper": 32, "egemaps": 25}, [5, 10],
                         {k: stores[k] for k in ("whisper", "egemaps")}, seed=1)[0],
            write_member(root / "models", "m_text", {"text": 32}, [1], {"text": stores["text"]}, seed=2,
                         fusion="late")[0]]
    bundle = save_bundle(root / "bundle", make_meta(2, use_attributes=True), dirs, encoders, asr,
                         train_durations=[1.0, 1.5, 2.0, 2.5, 3.0])
    files = []
    for i, seconds in enumerate([0.8, 2.4, 1.3, 3.1, 1.9, 0.6]):
        path = root / f"clip{i}.wav"
        sf.write(path, tiny_models.clip(seconds, 40 + i), SR, subtype="PCM_16")
        files.append(path)
    return {"bundle": bundle, "files": files, "cache": root / "cache"}


def file_values(frame):
    rows = frame[frame["level"] == "file"]
    return rows[VALUES].to_numpy(float), list(rows["text"])


def test_each_model_is_built_once_over_many_calls(setup, monkeypatch):
    loads = []
    original = whisper_encoder.load_whisper

    def counting(model, cache_dir, device):
        loads.append(model)
        return original(model, cache_dir, device)

    monkeypatch.setattr(whisper_encoder, "load_whisper", counting)
    predictor = Predictor.from_bundle(setup["bundle"], "cpu", setup["cache"])
    files = setup["files"]
    together = predictor.predict_files(files, segment="window", progress=False)
    alone = [predictor.predict_files([f], batch_size=1, segment="window", progress=False) for f in files]
    array = predictor.predict_array(sf.read(files[3], dtype="float32")[0], SR, name=str(files[3]), segment="window")
    # every model once: the ASR and the Whisper encoder share one Whisper (loaded once), after 8 calls
    assert dict(predictor.featurizer.builds) == {ASR: 1, "whisper": 1, "egemaps": 1, "text": 1}
    assert len(loads) == 1
    assert predictor.featurizer.encoder("whisper").whisper is predictor.featurizer.asr_model()
    values, texts = file_values(together)
    for i, frame in enumerate(alone):
        v, t = file_values(frame)
        np.testing.assert_allclose(v[0], values[i], rtol=0, atol=1e-5, err_msg=str(files[i]))
        assert t[0] == texts[i]
    np.testing.assert_allclose(array[VALUES].to_numpy(float), values[3], rtol=0, atol=1e-5)
    assert any(texts), "the tiny Whisper writes some text, so the text member reads something"

    predictor.close()
    assert predictor.featurizer.loaded == []
    again = predictor.predict_files(files[:2], segment="window", progress=False)
    assert dict(predictor.featurizer.builds) == {ASR: 2, "whisper": 2, "egemaps": 2, "text": 2}
    np.testing.assert_allclose(file_values(again)[0], values[:2], rtol=0, atol=1e-5)


def test_one_resident_model_gives_the_same_rows(setup):
    files = setup["files"]
    with Predictor.from_bundle(setup["bundle"], "cpu", setup["cache"]) as every:
        expected = file_values(every.predict_files(files, batch_size=3, segment="window", progress=False))
    assert every.featurizer.loaded == []  # the `with` block freed them
    one = Predictor.from_bundle(setup["bundle"], "cpu", setup["cache"], resident="one")
    frame = one.predict_files(files, batch_size=3, segment="window", progress=False)
    got = file_values(frame)
    np.testing.assert_allclose(got[0], expected[0], rtol=0, atol=1e-6)
    assert got[1] == expected[1]
    assert len(one.featurizer.loaded) == 1
    # each model built once per batch, never two at a time (a file longer than the window is two pieces)
    cut = frame.loc[frame["level"] == "segment", "file"]
    batches = -(-(len(cut) + len(files) - cut.nunique()) // 3)
    assert batches == 3 and dict(one.featurizer.builds) == {ASR: batches, "whisper": batches, "egemaps": batches,
                                                             "text": batches}


def test_resident_is_checked(setup):
    with pytest.raises(FeaturizerError, match="resident must be one of all, one, got 'some'"):
        Predictor.from_bundle(setup["bundle"], "cpu", setup["cache"], resident="some")


def test_the_default_window_comes_from_the_training_durations(setup):
    """The bundle records its training clips' durations (1-3 s here): files up to the longest (3 s) are scored
    whole, a longer one in windows of their 95th percentile (2.9 s), each second counted once in its file row."""
    predictor = Predictor.from_bundle(setup["bundle"], "cpu", setup["cache"])
    assert predictor.bundle.train_durations == {"n": 5, "min": 1.0, "p05": 1.1, "p50": 2.0, "p95": 2.9, "max": 3.0}
    assert (predictor.default_window, predictor.longest_whole, predictor.utterance_window) == (2.9, 3.0, 30.0)
    frame = predictor.predict_files(setup["files"][2:4], segment="window", progress=False)   # 1.3 s and 3.1 s
    assert frame["level"].tolist() == ["file", "file", "segment", "segment"]
    pieces = frame[frame["level"] == "segment"]
    assert pieces[["start_s", "end_s"]].to_numpy().round(3).tolist() == [[0, 2.9], [0.2, 3.1]]
    weights = np.array([0.2 + 2.7 / 2, 2.7 / 2 + 0.2])   # the 2.7 s both cover count half for each
    np.testing.assert_allclose(frame.iloc[1][VALUES].to_numpy(float),
                               weights @ pieces[VALUES].to_numpy(float) / weights.sum(), rtol=0, atol=1e-12)
    whole = predictor.predict_files(setup["files"][3:4], predictor.utterance_window, segment="window", progress=False)
    assert whole["level"].tolist() == ["file"]
    predictor.close()

"""The stage 1-2 recipe on a small learnable problem written into real feature stores."""
import numpy as np
import pandas as pd
import pytest
import torch

from medusa.dataset import FeatureDataset, pool_frames
from medusa.deepser import DeepSER, DeepSERConfig
from medusa.feature_store import FeatureStore, FeatureStoreWriter
from medusa.labels import ATTRIBUTES, CODES, SOFT_TARGET_COLUMNS
from medusa.training import TrainConfig, predict, train_deepser

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """8 classes; modality A separates classes by its frame mean, modality B carries only noise and length."""
    root = tmp_path_factory.mktemp("stores")
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1.5, (8, 6))
    rows = []
    with FeatureStoreWriter(root / "a", 6, {"kind": "audio"}) as wa, FeatureStoreWriter(root / "b", 4, {"kind": "text"}) as wb:
        for i in range(8 * 45):
            c = i % 8
            u = f"u{i:04d}"
            wa.add(u, centres[c] + rng.normal(0, 1.0, (int(rng.integers(3, 12)), 6)))
            wb.add(u, rng.normal(0, 1.0, (int(rng.integers(1, 5)), 4)))
            soft = np.full(8, 0.02)
            soft[c] = 1 - 0.02 * 7
            rows.append({"utt_id": u, "label": CODES[c], "split": "dev" if i % 9 == 0 else "train",
                         **dict(zip(SOFT_TARGET_COLUMNS, soft)), **dict(zip(ATTRIBUTES, [1 + c * 0.8, 4.0, 4.0]))})
    rows = pd.DataFrame(rows)
    stores = [FeatureStore(root / "a"), FeatureStore(root / "b")]
    make = lambda split: FeatureDataset(rows[rows["split"] == split], stores, [1, 1])  # noqa: E731
    return make("train"), make("dev")


def model(seed=0):
    torch.manual_seed(seed)
    return DeepSER(DeepSERConfig(input_dims=(6, 4), hidden=16, heads=2, dropout=0.1))


def test_pool_frames_averages_windows():
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    np.testing.assert_allclose(pool_frames(x, 2), [[1, 2], [5, 6], [8, 9]])
    assert pool_frames(x, 1) is x


def test_a_learnable_problem_is_learned(problem):
    train, dev = problem
    cfg = TrainConfig(batch_size=16, lr=3e-3, stage1_epochs=8, stage2_epochs=2, patience=8, seed=0)
    trained, history, best = train_deepser(model(), train, dev, cfg, CPU)
    assert best["score"] > 0.85, history
    assert [h["stage"] for h in history].count(2) >= 1
    probs, attrs = predict(trained, dev, 32, CPU)
    assert probs.shape == (len(dev), 8) and np.allclose(probs.sum(1), 1, atol=1e-5)
    acc = (np.asarray(CODES)[probs.argmax(1)] == dev.labels).mean()
    assert acc > 0.85
    # the attribute head learned arousal (which follows the class here) too
    assert np.corrcoef(attrs[:, 0], dev.attributes[:, 0])[0, 1] > 0.8


def test_same_seed_same_weights(problem):
    train, dev = problem
    cfg = TrainConfig(batch_size=16, lr=1e-3, stage1_epochs=1, stage2_epochs=1, seed=5)
    a, _, _ = train_deepser(model(), train, dev, cfg, CPU)
    b, _, _ = train_deepser(model(), train, dev, cfg, CPU)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_missing_utterance_in_a_store_is_named(problem, tmp_path):
    train, _ = problem
    rows = train.rows.copy()
    rows.loc[0, "utt_id"] = "not-there"
    with pytest.raises(KeyError, match="not-there"):
        FeatureDataset(rows, train.stores, [1, 1])


class _Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_same_weights(problem, tmp_path):
    """Interrupt after stage 1's epoch 2, then (resumed) after stage 2's epoch 1, then finish: the result is
    the uninterrupted run's: same weights, same history, same best epoch."""
    train, dev = problem
    cfg = TrainConfig(batch_size=16, lr=1e-3, stage1_epochs=3, stage2_epochs=2, patience=5, mixup_p=0.5, seed=3)
    full, full_history, full_best = train_deepser(model(), train, dev, cfg, CPU)
    ckpt = tmp_path / "m.checkpoint.pt"
    for _ in range(2):  # each call runs two epochs, then is interrupted
        seen = []

        def stop(row):
            seen.append(row)
            if len(seen) == 2:
                raise _Interrupt
        with pytest.raises(_Interrupt):
            train_deepser(model(), train, dev, cfg, CPU, checkpoint=ckpt, on_epoch=stop)
        assert ckpt.exists()
    resumed, history, best = train_deepser(model(), train, dev, cfg, CPU, checkpoint=ckpt)
    assert history == full_history and best == full_best
    for (k, va), vb in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(va, vb), k


def test_a_checkpoint_of_other_settings_is_not_resumed(problem, tmp_path, caplog):
    train, dev = problem
    ckpt = tmp_path / "m.checkpoint.pt"
    cfg = TrainConfig(batch_size=16, lr=1e-3, stage1_epochs=2, stage2_epochs=0, seed=1)
    train_deepser(model(), train, dev, cfg, CPU, checkpoint=ckpt)
    other = TrainConfig(batch_size=16, lr=2e-3, stage1_epochs=2, stage2_epochs=0, seed=1)
    _, history, _ = train_deepser(model(), train, dev, other, CPU, checkpoint=ckpt)
    assert "other settings" in caplog.text
    assert [h["epoch"] for h in history] == [1, 2]
    ckpt.write_bytes(b"torn")
    _, history, _ = train_deepser(model(), train, dev, other, CPU, checkpoint=ckpt)
    assert "unreadable checkpoint" in caplog.text and len(history) == 2

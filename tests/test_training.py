"""The stage 1-2 recipe on a small learnable problem written into real feature stores."""
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import deepser_config, train_config

from medusa.features.store.reader import RESERVED_META_KEYS, FeatureStore
from medusa.features.store.writer import FeatureStoreWriter
from medusa.labels import ATTRIBUTES, CODES, SOFT_TARGET_COLUMNS
from medusa.model import training
from medusa.model.dataset import FeatureDataset, pool_frames, pooled_length
from medusa.model.deepser import DeepSER
from medusa.model.training import (
    NonFiniteLossError,
    _epoch_rows,
    _stage1_rows,
    _stage2_pool,
    predict,
    train_deepser,
    train_step,
    training_rows,
)

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
    return DeepSER(deepser_config((6, 4), hidden=16, heads=2, dropout=0.1))


def test_pool_frames_averages_windows():
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    np.testing.assert_allclose(pool_frames(x, 2), [[1, 2], [5, 6], [8, 9]])
    assert pool_frames(x, 1) is x


def test_pooled_length_is_the_length_pool_frames_gives():
    """The one formula for frames after time pooling (batching, length sorting, prediction all call it)."""
    for t in range(1, 23):   # a stored utterance has at least one frame
        for pool in (1, 2, 3, 5, 10):
            assert pooled_length(t, pool) == len(pool_frames(np.zeros((t, 2), np.float32), pool)), (t, pool)


def test_a_learnable_problem_is_learned(problem):
    train, dev = problem
    cfg = train_config(batch_size=16, lr=3e-3, stage1_epochs=8, stage2_epochs=2, patience=8, seed=0)
    trained, history, best = train_deepser(model(), train, dev, cfg, CPU)
    assert best["score"] > 0.85, history
    assert [h["stage"] for h in history].count(2) >= 1
    probs, attrs = predict(trained, dev, 32, CPU, amp=True)
    assert probs.shape == (len(dev), 8) and np.allclose(probs.sum(1), 1, atol=1e-5)
    acc = (np.asarray(CODES)[probs.argmax(1)] == dev.labels).mean()
    assert acc > 0.85
    # the attribute head learned arousal (which follows the class here) too
    assert np.corrcoef(attrs[:, 0], dev.attributes[:, 0])[0, 1] > 0.8


def test_same_seed_same_weights(problem):
    train, dev = problem
    cfg = train_config(batch_size=16, lr=1e-3, stage1_epochs=1, stage2_epochs=1, seed=5)
    a, _, _ = train_deepser(model(), train, dev, cfg, CPU)
    b, _, _ = train_deepser(model(), train, dev, cfg, CPU)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_prefetching_batches_changes_nothing(problem, monkeypatch):
    """Batches loaded ahead in threads (FeatureDataset.batches) are the batches loaded in line: the same weights,
    history and predictions."""
    import medusa.model.dataset
    from medusa.model.training import predict

    train, dev = problem
    cfg = train_config(batch_size=8, lr=1e-3, stage1_epochs=2, stage2_epochs=1, seed=3)
    runs = []
    for ahead in (medusa.model.dataset.PREFETCH_BATCHES, 0):
        monkeypatch.setattr(medusa.model.dataset, "PREFETCH_BATCHES", ahead)
        trained, history, _ = train_deepser(model(), train, dev, cfg, CPU)
        runs.append((trained.state_dict(), history, predict(trained, dev, 5, CPU, amp=True)[0]))
    (wa, ha, pa), (wb, hb, pb) = runs
    assert ha == hb and np.array_equal(pa, pb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ids = [b.utt_ids for b in dev.batches([[0, 1], [2], [3, 4, 5]], ahead=2)]
    assert ids == [list(dev.rows["utt_id"].iloc[i]) for i in ([0, 1], [2], [3, 4, 5])]


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
    cfg = train_config(batch_size=16, lr=1e-3, stage1_epochs=3, stage2_epochs=2, patience=5, mixup_p=0.5, seed=3)
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
    cfg = train_config(batch_size=16, lr=1e-3, stage1_epochs=2, stage2_epochs=0, seed=1)
    train_deepser(model(), train, dev, cfg, CPU, checkpoint=ckpt)
    other = train_config(batch_size=16, lr=2e-3, stage1_epochs=2, stage2_epochs=0, seed=1)
    _, history, _ = train_deepser(model(), train, dev, other, CPU, checkpoint=ckpt)
    assert "other settings" in caplog.text
    assert [h["epoch"] for h in history] == [1, 2]
    ckpt.write_bytes(b"torn")
    _, history, _ = train_deepser(model(), train, dev, other, CPU, checkpoint=ckpt)
    assert "unreadable checkpoint" in caplog.text and len(history) == 2


# --------------------------------------------------------------- which rows train (issue 11, points 3 and 9)

def _with_targetless_rows(rows: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """The training rows with some made X, some O (both keep their class votes, as in MSP-Podcast) and some
    all-Other: a consensus class but no class vote, hence no soft target (NaN), as a labelled utterance without
    annotator rows gets from the manifest. The all-Other rows are put in the smallest class, so that stage 2's
    balanced draw (which takes every utterance of the smallest class) would pick them if they were eligible."""
    rows = rows.copy().reset_index(drop=True)
    smallest = rows["label"].value_counts().idxmin()
    kinds = {"X": list(rows["utt_id"][rows["label"] != smallest][:7]),
             "O": list(rows["utt_id"][rows["label"] != smallest][7:12]),
             "all_other": list(rows["utt_id"][rows["label"] == smallest][:3])}
    rows.loc[rows["utt_id"].isin(kinds["X"]), "label"] = "X"
    rows.loc[rows["utt_id"].isin(kinds["O"]), "label"] = "O"
    rows.loc[rows["utt_id"].isin(kinds["all_other"]), list(SOFT_TARGET_COLUMNS)] = np.nan
    return rows, kinds


def test_one_hot_training_rows_exclude_x_o_and_all_other_rows_and_soft_keeps_x(problem):
    train, _ = problem
    rows, kinds = _with_targetless_rows(train.rows)
    soft = FeatureDataset(rows, train.stores, [1, 1])
    hot = FeatureDataset(rows, train.stores, [1, 1], one_hot=True)
    ids = lambda data, idx: set(data.rows["utt_id"].to_numpy()[idx])  # noqa: E731
    everything = set(rows["utt_id"])
    # one-hot: neither X, nor O, nor all-Other rows train, in either stage; their targets are NaN, not zero
    assert ids(hot, _stage1_rows(hot)) == everything - set(kinds["X"]) - set(kinds["O"]) - set(kinds["all_other"])
    assert ids(hot, _stage2_pool(hot)) == ids(hot, _stage1_rows(hot))
    assert np.isnan(hot.targets[~hot.has_target]).all() and (hot.targets[hot.has_target].sum(1) == 1).all()
    # soft: X and O rows keep their vote distributions in stage 1; only rows without class votes are out
    assert ids(soft, _stage1_rows(soft)) == everything - set(kinds["all_other"])
    assert ids(soft, _stage2_pool(soft)) == ids(hot, _stage2_pool(hot))  # stage 2 balances by consensus class
    cfg = train_config(stage2_epochs=1)
    assert training_rows(hot, cfg) == {"stage1": len(rows) - 15, "stage2_pool": len(rows) - 15}
    assert training_rows(soft, cfg) == {"stage1": len(rows) - 3, "stage2_pool": len(rows) - 15}
    assert training_rows(soft, train_config(stage2_epochs=0))["stage2_pool"] is None


def test_one_hot_training_uses_only_rows_with_a_class(problem):
    """The stage-1 epochs of a one-hot run see only rows with a class (the old code trained X/O rows with an
    all-zero target), and the class weights come from those rows alone."""
    train, dev = problem
    rows, kinds = _with_targetless_rows(train.rows)
    hot = FeatureDataset(rows, train.stores, [1, 1], one_hot=True)
    cfg = train_config(batch_size=16, lr=1e-3, stage1_epochs=1, stage2_epochs=1, seed=2)
    _, history, _ = train_deepser(model(), hot, dev, cfg, CPU)
    assert history[0]["stage"] == 1 and history[0]["utterances"] == len(rows) - 15
    assert all(np.isfinite(h["train_loss"]) for h in history)


def test_rows_without_a_target_are_never_drawn_in_stage_2(problem):
    """A labelled utterance without class votes (NaN soft target) used to be drawn by stage 2's balanced draw
    and make every stage-2 loss nan; now no draw contains it and every loss is finite."""
    train, dev = problem
    rows, kinds = _with_targetless_rows(train.rows)
    soft = FeatureDataset(rows, train.stores, [1, 1])
    rng = np.random.default_rng(0)
    drawn = set()
    for _ in range(20):
        drawn |= set(soft.rows["utt_id"].to_numpy()[_epoch_rows(2, soft, rng)])
    assert drawn and not drawn & set(kinds["all_other"]) and not drawn & set(kinds["X"] + kinds["O"])
    cfg = train_config(batch_size=16, lr=1e-3, stage1_epochs=1, stage2_epochs=2, patience=5, seed=4)
    _, history, _ = train_deepser(model(), soft, dev, cfg, CPU)
    assert [h["stage"] for h in history] == [1, 2, 2]
    assert all(np.isfinite(h["train_loss"]) for h in history), history


def test_a_non_finite_loss_stops_training_and_names_the_batch(problem):
    train, dev = problem
    rows, kinds = _with_targetless_rows(train.rows)
    soft = FeatureDataset(rows, train.stores, [1, 1])
    cfg = train_config(batch_size=16, lr=1e-3, mixup_p=0.0, seed=0)
    rng = np.random.default_rng(0)
    # a batch holding a row without a target (as the old stage-2 draw produced): the error names the batch
    # and the culprit, and no weight has changed
    idx = np.flatnonzero(soft.rows["utt_id"].isin(kinds["all_other"][:1]).to_numpy())
    idx = np.concatenate([idx, [i for i in range(len(soft)) if soft.has_target[i]][:3]])
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    optimizer = torch.optim.AdamW(m.parameters(), lr=1e-3)
    batch = soft.batch(idx)
    with pytest.raises(NonFiniteLossError) as err:
        train_step(m, optimizer, batch, None, cfg, rng, CPU)
    text = str(err.value)
    assert text.startswith("the training loss is nan on the batch of utterances " + ", ".join(batch.utt_ids))
    assert f"{kinds['all_other'][0]} has no finite training target" in text
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    # a model that diverged (here: a nan weight) stops the stage too, which says where
    m = model()
    with torch.no_grad():
        m.class_head.bias[0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"^stage 1 epoch 1: the training loss is nan on the batch of "
                                                 r"utterances u\d{4}, .*the model itself diverged"):
        train_deepser(m, train, dev, train_config(batch_size=16, stage1_epochs=1, stage2_epochs=0), CPU)


# ------------------------------------------------------------ checkpoints resume only for the same inputs

def _copy_stores(problem, root) -> list[FeatureStore]:
    train, _ = problem
    for s in train.stores:
        shutil.copytree(s.root, root / s.root.name)
    return [FeatureStore(root / s.root.name) for s in train.stores]


def _interrupted_after_one_epoch(train, dev, cfg, ckpt):
    """Leave at `ckpt` the checkpoint of one epoch of training on (train, dev)."""
    ckpt.unlink(missing_ok=True)  # the caller deletes a finished run's checkpoint (members.train_member)

    def stop(row):
        raise _Interrupt
    with pytest.raises(_Interrupt):
        train_deepser(model(), train, dev, cfg, CPU, checkpoint=ckpt, on_epoch=stop)
    assert ckpt.exists()


def test_a_checkpoint_is_not_resumed_after_a_manifest_or_store_change(problem, tmp_path, caplog):
    """A checkpoint made from other targets (a manifest whose labels changed, same utterances) or from another
    feature store (re-extracted: same utterances, same lengths, other frames) starts afresh; a store rewritten
    with the same bytes still resumes (the identity is the content, not the file's age)."""
    caplog.set_level(logging.INFO, logger="medusa.model.training")
    train0, dev0 = problem
    stores = _copy_stores(problem, tmp_path)
    make = lambda rows: FeatureDataset(rows, stores, [1, 1])  # noqa: E731
    train, dev = make(train0.rows), make(dev0.rows)
    cfg = train_config(batch_size=16, lr=1e-3, stage1_epochs=2, stage2_epochs=0, patience=5, seed=6)
    ckpt = tmp_path / "m.checkpoint.pt"

    def fresh(train_, dev_):
        return train_deepser(model(), train_, dev_, cfg, CPU)[1]

    # the manifest's soft targets of a few rows changed (same ids, same labels): afresh
    relabelled = train.rows.copy()
    relabelled.loc[:4, list(SOFT_TARGET_COLUMNS)] = np.full(8, 1 / 8)
    _interrupted_after_one_epoch(train, dev, cfg, ckpt)
    caplog.clear()
    _, history, _ = train_deepser(model(), make(relabelled), dev, cfg, CPU, checkpoint=ckpt)
    assert "other settings or data" in caplog.text and history == fresh(make(relabelled), dev)

    # a dev label changed: selection would differ, afresh too
    dev_rows = dev.rows.copy()
    dev_rows.loc[0, "label"] = CODES[(CODES.index(dev_rows.loc[0, "label"]) + 1) % 8]
    _interrupted_after_one_epoch(train, dev, cfg, ckpt)
    caplog.clear()
    _, history, _ = train_deepser(model(), train, make(dev_rows), cfg, CPU, checkpoint=ckpt)
    assert "other settings or data" in caplog.text and [h["epoch"] for h in history] == [1, 2]

    # store b re-extracted with other frames of the same shapes: afresh
    b = stores[1]
    original = {u: np.asarray(b[u], dtype=np.float32) for u in b.utt_ids}

    def rewrite_b():  # write store b anew with frames shifted by 0.5 (the same bytes on every call)
        with FeatureStoreWriter(b.root, b.dim, {k: v for k, v in b.meta.items() if k not in RESERVED_META_KEYS}) as w:
            for u in b.utt_ids:
                w.add(u, original[u] + 0.5)
        stores[1] = FeatureStore(b.root)

    _interrupted_after_one_epoch(train, dev, cfg, ckpt)
    rewrite_b()
    train, dev = make(train0.rows), make(dev0.rows)
    caplog.clear()
    _, history, _ = train_deepser(model(), train, dev, cfg, CPU, checkpoint=ckpt)
    assert "other settings or data" in caplog.text and history == fresh(train, dev)

    # the same store written again, byte for byte: a new frames file, so (conservatively) afresh as well
    _interrupted_after_one_epoch(train, dev, cfg, ckpt)
    rewrite_b()
    train, dev = make(train0.rows), make(dev0.rows)
    caplog.clear()
    _, history, _ = train_deepser(model(), train, dev, cfg, CPU, checkpoint=ckpt)
    assert "other settings or data" in caplog.text and [h["epoch"] for h in history] == [1, 2]

    # nothing changed (the stores opened anew, the rows rebuilt): it resumes, to the uninterrupted result
    _interrupted_after_one_epoch(train, dev, cfg, ckpt)
    stores[:] = [FeatureStore(s.root) for s in stores]
    train, dev = make(train0.rows.copy()), make(dev0.rows.copy())
    caplog.clear()
    _, history, _ = train_deepser(model(), train, dev, cfg, CPU, checkpoint=ckpt)
    assert "resuming from" in caplog.text and "other settings" not in caplog.text
    assert history == fresh(train, dev)


def test_store_identity_follows_meta_index_and_frames_file(problem, tmp_path):
    stores = _copy_stores(problem, tmp_path)
    a = stores[0]
    before = training.store_identity(a)
    assert training.store_identity(FeatureStore(a.root)) == before
    meta = a.root / "meta.json"
    meta.write_text(meta.read_text().replace('"kind": "audio"', '"kind": "audio2"'))
    assert training.store_identity(a) != before


def test_a_training_set_without_usable_rows_is_an_error_before_any_epoch(problem):
    train, dev = problem
    rows = train.rows.copy()
    rows["label"] = "X"                     # soft: X rows train in stage 1, but stage 2 has nothing to balance
    cfg = train_config(stage1_epochs=1, stage2_epochs=1)
    with pytest.raises(ValueError, match="no training utterance with a target has one of A S H U F D C N as its "
                                         "consensus; set train.stage2_epochs: 0"):
        train_deepser(model(), FeatureDataset(rows, train.stores, [1, 1]), dev, cfg, CPU)
    with pytest.raises(ValueError, match=rf"none of the {len(rows)} training utterances has a training target "
                                         r"\(one-hot: X/O consensus or no class votes\)"):
        train_deepser(model(), FeatureDataset(rows, train.stores, [1, 1], one_hot=True), dev, cfg, CPU)


def test_an_epoch_of_epoch_steps_takes_that_many_batches_from_fresh_passes(problem):
    """epoch_steps 0: one pass over the stage's rows; N: N batches from as many reshuffled passes as needed (a
    small corpus trains as many steps as a large one); stage 2 draws a new balanced subset for each pass."""
    train, _ = problem
    rows = len(training._stage1_rows(train))
    rng = np.random.default_rng(0)
    one_pass = training._epoch_batches(1, train, train_config(batch_size=16, epoch_steps=0), rng)
    assert sorted(np.concatenate(one_pass)) == list(training._stage1_rows(train))
    n = 3 * len(one_pass) + 2
    batches = training._epoch_batches(1, train, train_config(batch_size=16, epoch_steps=n), rng)
    assert len(batches) == n and all(len(b) <= 16 for b in batches)
    counts = np.bincount(np.concatenate(batches), minlength=len(train))
    assert counts[training._stage1_rows(train)].min() >= 3  # three whole passes, then a part of a fourth
    assert counts.sum() == 3 * rows + sum(len(b) for b in batches[-2:])
    stage2 = training._epoch_batches(2, train, train_config(batch_size=16, epoch_steps=n), rng)
    assert len(stage2) == n


def test_a_step_budget_is_recorded_and_checkpointed(problem, tmp_path):
    train, dev = problem
    cfg = train_config(batch_size=16, lr=1e-3, stage1_epochs=2, stage2_epochs=1, patience=5, epoch_steps=7, seed=2)
    _, history, _ = train_deepser(model(), train, dev, cfg, CPU)
    assert [h["steps"] for h in history] == [7, 14, 21]
    assert all(h["utterances"] <= 7 * 16 for h in history)


# ------------------------------------------------------------------ the run's classes: the manifest's p_ columns

def _three_class(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows as a 3-class run (A S N): only p_A, p_S, p_N, soft targets renormalised over them; rows of the
    other classes are labelled X (they keep their class votes)."""
    columns = ["p_A", "p_S", "p_N"]
    out = rows.drop(columns=[c for c in SOFT_TARGET_COLUMNS if c not in columns]).reset_index(drop=True)
    out[columns] = out[columns].div(out[columns].sum(axis=1), axis=0)
    out["label"] = out["label"].where(out["label"].isin(["A", "S", "N"]), "X")
    return out


def test_targets_weights_and_balanced_draws_follow_the_run_classes(problem):
    train, dev = problem
    rows = _three_class(train.rows)
    soft = FeatureDataset(rows, train.stores, [1, 1])
    hot = FeatureDataset(rows, train.stores, [1, 1], one_hot=True)
    assert soft.classes == hot.classes == ("A", "S", "N")
    assert soft.targets.shape == hot.targets.shape == (len(rows), 3)
    np.testing.assert_allclose(soft.targets, rows[["p_A", "p_S", "p_N"]].to_numpy(np.float32))
    in_class = rows["label"].isin(["A", "S", "N"]).to_numpy()
    assert soft.has_target.all() and (hot.has_target == in_class).all()     # X rows keep their votes when soft
    np.testing.assert_array_equal(hot.targets[in_class].argmax(1),
                                  [("A", "S", "N").index(c) for c in rows.loc[in_class, "label"]])
    # stage 2 balances over the three classes only
    rng = np.random.default_rng(0)
    drawn = soft.labels[_epoch_rows(2, soft, rng)]
    labels, counts = np.unique(drawn, return_counts=True)
    assert list(labels) == ["A", "N", "S"] and len(set(counts)) == 1
    # a 3-output model trains and selects over the three classes; an 8-output one is refused
    dev3 = FeatureDataset(_three_class(dev.rows), dev.stores, [1, 1])
    cfg = train_config(batch_size=16, lr=3e-3, stage1_epochs=2, stage2_epochs=1, seed=0)
    torch.manual_seed(0)
    trained, history, best = train_deepser(DeepSER(deepser_config((6, 4), n_classes=3)), soft, dev3, cfg, CPU)
    probs, _ = predict(trained, dev3, 32, CPU, amp=True)
    assert probs.shape == (len(dev3), 3) and best["score"] > 0.5 and len(history) == 3
    with pytest.raises(ValueError, match=r"the model has 8 class outputs but the run has 3 classes \(A S N\)"):
        train_deepser(model(), soft, dev3, cfg, CPU)
    with pytest.raises(ValueError, match=r"the dev rows have the classes A S H U F D C N but the training rows A S N"):
        train_deepser(DeepSER(deepser_config((6, 4), n_classes=3)), soft, dev, cfg, CPU)


def test_rows_without_attribute_ratings_add_no_attribute_loss(problem):
    """All attributes NaN (a corpus without ratings): the MSE term reads no row, so the loss is the weighted
    cross-entropy alone, exactly as with mse_weight 0; nothing stands in for the missing ratings."""
    from medusa.model.training import batch_loss

    train, _ = problem
    unrated = FeatureDataset(train.rows.assign(**{a: np.nan for a in ATTRIBUTES}), train.stores, [1, 1])
    batch = unrated.batch(np.arange(16))
    m = model()
    m.eval()  # no dropout: two calls on the same batch give the same numbers
    for mixup in (0.0, 1.0):
        losses = [batch_loss(m, batch, None, train_config(mixup_p=mixup, mse_weight=w), np.random.default_rng(0), CPU)
                  for w in (0.4, 0.0)]
        assert torch.isfinite(losses[0]) and losses[0].item() == losses[1].item(), mixup

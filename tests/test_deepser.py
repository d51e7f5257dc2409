"""DeepSER's architecture and the loss pieces of the stage 1-2 recipe."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import deepser_config, train_config

from medusa.config.params import ArchitectureParams
from medusa.labels import CODES, balanced_epoch, class_weights
from medusa.model.deepser import DeepSER, DeepSERConfig, count_parameters, manifold_mixup, soft_cross_entropy


def batch(dims, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs, masks = [], []
    for d, lens in zip(dims, lengths):
        t = max(lens)
        x = torch.randn(len(lens), t, d, generator=g)
        m = torch.arange(t)[None, :] < torch.tensor(lens)[:, None]
        xs.append(x * m.unsqueeze(-1))
        masks.append(m)
    return xs, masks


def pad(xs, masks, extra):
    """The same batch with `extra` more padding frames on every modality."""
    return ([F.pad(x, (0, 0, 0, extra), value=7.0) for x in xs],
            [F.pad(m, (0, extra), value=False) for m in masks])


@pytest.mark.parametrize("fusion", ["deep", "late"])
def test_padding_leaves_outputs_unchanged(fusion):
    torch.manual_seed(0)
    cfg = deepser_config((12, 5, 9), hidden=16, heads=2, dropout=0.1, fusion=fusion)
    model = DeepSER(cfg).eval()
    xs, masks = batch(cfg.input_dims, [[6, 3], [8, 8], [2, 5]])
    with torch.no_grad():
        logits, attrs = model(xs, masks)
        logits_p, attrs_p = model(*pad(xs, masks, 5))
    torch.testing.assert_close(logits, logits_p, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attrs, attrs_p, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_any_number_of_modalities_and_every_leg_gets_gradient(n):
    torch.manual_seed(n)
    cfg = deepser_config(tuple(range(4, 4 + n)), hidden=16, heads=4, layers=3, dropout=0.0)
    model = DeepSER(cfg)
    xs, masks = batch(cfg.input_dims, [[5, 3]] * n)
    logits, attrs = model(xs, masks)
    assert logits.shape == (2, len(CODES)) and attrs.shape == (2, 3)
    (logits.sum() + attrs.sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_late_fusion_has_no_fusion_encoders_and_fewer_parameters():
    deep = DeepSER(deepser_config((8, 8), hidden=16, heads=2))
    late = DeepSER(deepser_config((8, 8), hidden=16, heads=2, fusion="late"))
    assert not hasattr(late, "fusion1") and count_parameters(late) < count_parameters(deep)


def test_config_errors_are_clear():
    """The checks are the params schema's own (ArchitectureParams), and name the setting."""
    with pytest.raises(ValueError, match=r"layers\n.*greater than or equal to 2"):
        deepser_config((4,), layers=1)
    with pytest.raises(ValueError, match="divisible by heads"):
        deepser_config((4,), hidden=10, heads=3)
    with pytest.raises(ValueError, match=r"fusion\n.*'deep' or 'late'"):
        deepser_config((4,), fusion="mid")
    with pytest.raises(ValueError, match=r"input_dims\n.*at least 1 item"):
        deepser_config(())
    with pytest.raises(ValueError, match="expected 2 modalities"):
        DeepSER(deepser_config((4, 4), hidden=8, heads=2))(*batch((4,), [[3]]))


def test_mixup_mixes_features_targets_and_attributes_with_one_lambda():
    x, t, a = torch.randn(4, 6), torch.softmax(torch.randn(4, 8), -1), torch.rand(4, 3) * 6 + 1
    perm = torch.tensor([2, 0, 3, 1])
    xm, tm, am = manifold_mixup(x, t, a, 0.3, perm)
    for mixed, orig in ((xm, x), (tm, t), (am, a)):
        torch.testing.assert_close(mixed, 0.3 * orig + 0.7 * orig[perm])
    torch.testing.assert_close(tm.sum(-1), torch.ones(4))


def test_soft_cross_entropy_equals_hard_on_one_hot_and_applies_weights():
    logits, y = torch.randn(5, 8), torch.tensor([0, 3, 7, 7, 2])
    one_hot = F.one_hot(y, 8).float()
    torch.testing.assert_close(soft_cross_entropy(logits, one_hot), F.cross_entropy(logits, y))
    w = torch.arange(1.0, 9.0)
    torch.testing.assert_close(soft_cross_entropy(logits, one_hot, w),
                               F.cross_entropy(logits, y, weight=w, reduction="none").mean())
    soft = torch.softmax(torch.randn(5, 8), -1)   # soft targets: the expected CE under the vote distribution
    expected = sum(soft[:, c] * F.cross_entropy(logits, torch.full((5,), c), reduction="none") for c in range(8)).mean()
    torch.testing.assert_close(soft_cross_entropy(logits, soft), expected)


def test_class_weight_formula():
    counts = np.array([100, 50, 25, 0])
    w = class_weights(counts)
    np.testing.assert_allclose(w[:3], np.sqrt(175 / (4 * counts[:3])))
    assert w[3] == 0
    np.testing.assert_allclose(class_weights(np.array([10, 10])), [1.0, 1.0])


def test_balanced_epoch_has_equal_counts_and_is_fresh_each_draw():
    rng = np.random.default_rng(0)
    labels = np.array(["N"] * 50 + ["H"] * 20 + ["F"] * 5 + ["X"] * 7)
    a, b = balanced_epoch(labels, rng), balanced_epoch(labels, rng)
    counts = {c: int((labels[a] == c).sum()) for c in ("N", "H", "F")}
    assert counts == {"N": 5, "H": 5, "F": 5} and "X" not in labels[a]
    assert len(set(a)) == len(a) and not np.array_equal(np.sort(a), np.sort(b))
    big = balanced_epoch(labels, rng, per_class=10)
    assert {c: int((labels[big] == c).sum()) for c in ("N", "H", "F")} == {"N": 10, "H": 10, "F": 10}


def test_standardised_inputs_make_the_model_blind_to_each_dimensions_scale_and_offset():
    """With statistics set (train.standardise), features a*x + b give the same outputs as x when the statistics
    follow: raw eGeMAPS (deviations 0-324, means up to 2.7e3) reaches the first layer on the same footing as a
    unit-scale encoder. Padded frames stay zero, so padding still changes nothing."""
    torch.manual_seed(0)
    model = DeepSER(deepser_config((6, 3))).eval()
    xs, masks = batch((6, 3), [[5, 2], [3, 4]])
    scale, offset = torch.tensor([1e-2, 1.0, 10.0, 300.0, 1e3, 5.0]), torch.tensor([0.0, -4.0, 2e3, 7.0, 0.0, 1.0])
    stats = [(torch.randn(6).numpy(), (torch.rand(6) + 0.5).numpy()), (np.zeros(3), np.ones(3))]
    model.set_standardisation(stats)
    ref = model(xs, masks)
    moved = [(xs[0] * scale + offset) * masks[0].unsqueeze(-1), xs[1]]
    model.set_standardisation([(stats[0][0] * scale.numpy() + offset.numpy(), stats[0][1] * scale.numpy()), stats[1]])
    out = model(moved, masks)
    for a, b in zip(ref, out):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # the statistics are buffers: in the state dict (so in model.safetensors and the bundle), never trained
    assert "standardise.0.mean" in model.state_dict() and not any("standardise" in n for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match="positive scales"):
        model.set_standardisation([(np.zeros(6), np.zeros(6)), stats[1]])
    with pytest.raises(ValueError, match="modality 1"):
        model.set_standardisation([stats[0], (np.zeros(4), np.ones(4))])


def test_the_architecture_is_read_from_the_train_settings_it_is_declared_in():
    train = train_config(hidden=24, heads=3, layers=3, dropout=0.2, ff_mult=2, fusion="late")
    cfg = DeepSERConfig.from_train((7, 5), train)
    assert (cfg.input_dims, cfg.hidden, cfg.heads, cfg.layers, cfg.dropout, cfg.ff_mult, cfg.fusion) == \
        ((7, 5), 24, 3, 3, 0.2, 2, "late")
    assert DeepSERConfig.from_train([7, 5], train, n_classes=4).n_classes == 4
    # one model of the schema: the architecture is ArchitectureParams' fields, nothing declared again
    assert set(ArchitectureParams.model_fields) < set(DeepSERConfig.model_fields)
    assert set(DeepSERConfig.model_fields) - set(ArchitectureParams.model_fields) == \
        {"input_dims", "n_classes", "n_attributes", "extra"}


def test_a_config_survives_its_json_form():
    cfg = deepser_config((7, 5), n_classes=3, fusion="late")
    saved = json.loads(json.dumps(cfg.to_dict()))
    assert saved["input_dims"] == [7, 5] and DeepSERConfig.from_dict(saved) == cfg

"""Losses, ramp-ups and the omni-correlation consistency against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from CAMLSegmentationLib.losses import dice_loss, mutual_consistency_loss, sharpen, sigmoid_rampup
from CAMLSegmentationLib.network import CAMLNet, NetworkConfig
from CAMLSegmentationLib.occ import (
    MemoryBank,
    omni_correlation,
    omni_correlation_loss,
    select_confident,
)
from CAMLSegmentationLib.presets import TrainingPreset, load_preset
from CAMLSegmentationLib.trainer import CAMLObjective, learning_rate, loss_weights


def test_sharpen_values():
    p = torch.tensor([0.5, 0.6, 0.9, 0.1, 0.0, 1.0])
    got = sharpen(p, 0.1)
    a = 10.0
    expected = [x ** a / (x ** a + (1 - x) ** a) for x in (0.5, 0.6, 0.9, 0.1)]
    assert torch.allclose(got[:4], torch.tensor(expected), atol=1e-6)
    assert got[4] < 1e-6 and got[5] > 1 - 1e-6
    assert not torch.isnan(sharpen(p.half().float(), 0.1)).any()


def test_rampup_values():
    assert sigmoid_rampup(0, 20) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(10, 20) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(20, 20) == 1.0 and sigmoid_rampup(99, 20) == 1.0
    assert sigmoid_rampup(5, 0) == 1.0
    preset = TrainingPreset()  # official: t = iter // 150, R = 20 for 8 labeled
    lc, lo = loss_weights(preset, 1500, 8)
    assert lc == pytest.approx(math.exp(-5 * 0.25)) and lo == pytest.approx(0.05 * math.exp(-5 * 0.25))
    assert loss_weights(preset, 1500, 4)[0] == pytest.approx(math.exp(-5 * 0.75 ** 2))
    assert loss_weights(preset, 1500, 16)[0] == pytest.approx(math.exp(-5 * (1 - 10 / 15) ** 2))


def test_learning_rate_schedules():
    assert learning_rate(TrainingPreset(), 14000) == 0.01
    poly = load_preset("cpu")
    assert learning_rate(poly, 0) == pytest.approx(0.01)
    assert learning_rate(poly, poly.iterations) < 1e-4


def test_dice_and_consistency_hand_values():
    prob = torch.tensor([[0.5, 1.0, 0.0, 0.25]])
    target = torch.tensor([[1, 1, 0, 0]])
    assert float(dice_loss(prob, target)) == pytest.approx(1 - 2 * 1.5 / (1.75 + 2), abs=1e-7)
    pv = torch.tensor([0.9, 0.1])
    pa = torch.tensor([0.6, 0.4])
    s = lambda x: x ** 10 / (x ** 10 + (1 - x) ** 10)  # noqa: E731
    expected = ((0.9 - s(0.6)) ** 2 + (0.1 - s(0.4)) ** 2) / 2 + ((0.6 - s(0.9)) ** 2 + (0.4 - s(0.1)) ** 2) / 2
    assert float(mutual_consistency_loss(pv, pa)) == pytest.approx(expected, rel=1e-5)


def test_omni_correlation_loss_hand_computed():
    # Memory: two entries per class, class 0 along x, class 1 along y.
    memory = [torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]])]
    feat_v = torch.tensor([[0.1, 0.0], [0.1, 0.0]])  # logits / 0.1 = [1, 1, 0, 0]
    feat_a = torch.zeros(2, 2)  # uniform correlation 1/4
    picks = [torch.tensor([0, 1]), torch.tensor([], dtype=torch.long)]
    corr_v = omni_correlation(feat_v, picks, memory, 0.1)
    corr_a = omni_correlation(feat_a, picks, memory, 0.1)
    e = math.e
    assert torch.allclose(corr_v[0], torch.tensor([e, e, 1, 1]) / (2 * e + 2))
    assert torch.allclose(corr_a, torch.full((2, 4), 0.25))
    # -sum_j 1/4 log(c_j) per row = log(2e + 2) - 1/2, averaged over the two rows.
    assert float(omni_correlation_loss(corr_a, corr_v)) == pytest.approx(math.log(2 * e + 2) - 0.5, rel=1e-5)
    # A class with a single pick, or no memory at all, gives no rows.
    assert omni_correlation(feat_v, [torch.tensor([0]), torch.tensor([1])], memory) is None
    assert omni_correlation(feat_v, picks, [None, None]) is None


def test_select_confident_keeps_the_most_confident_per_class():
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    conf = torch.tensor([0.6, 0.9, 0.99, 0.7, 0.8, 0.95])
    picks = select_confident(labels, conf, 2, 2)
    assert sorted(picks[0].tolist()) == [2, 4] and sorted(picks[1].tolist()) == [1, 5]


def test_memory_bank_sampling_and_state():
    bank = MemoryBank(num_cases=3, num_classes=2, feat_dim=2)
    bank.update(0, torch.tensor([[0.0, 0], [1, 1], [2, 2]]), torch.tensor([0, 1, 0]))
    bank.update(2, torch.tensor([[3.0, 3], [4, 4]]), torch.tensor([1, 0]))
    assert bank.count(0) == 3 and bank.count(1) == 2
    g = torch.Generator().manual_seed(0)
    s = bank.sample(3, g)
    assert s[1] is None  # only two class-1 entries
    assert sorted(s[0][:, 0].tolist()) == [0.0, 2.0, 4.0]  # without replacement: all three
    bank.update(0, torch.tensor([[9.0, 9]]), torch.tensor([1]))  # a case's entries are replaced
    assert bank.count(0) == 1 and bank.count(1) == 2
    clone = MemoryBank(3, 2, 2)
    clone.load_state_dict(bank.state_dict())
    assert torch.equal(clone.sample(2, torch.Generator().manual_seed(3))[1],
                       bank.sample(2, torch.Generator().manual_seed(3))[1])
    with pytest.raises(ValueError, match="another number"):
        MemoryBank(4, 2, 2).load_state_dict(bank.state_dict())


def test_memory_bank_sampling_does_no_work_per_stored_entry(monkeypatch):
    """Drawing 256 entries from a bank of millions must not permute (or touch) all of them."""
    bank = MemoryBank(num_cases=4, num_classes=2, feat_dim=1)
    sizes = [30_000, 0, 50_000, 20_000]
    offset = 0
    for case, n in enumerate(sizes):
        # Each entry's feature is its global index within class 0, so draws can be traced back.
        feats = torch.arange(offset, offset + n, dtype=torch.float32)[:, None]
        bank.update(case, feats, torch.zeros(n, dtype=torch.long))
        offset += n
    asked = []
    real_randperm = torch.randperm

    def recording_randperm(n, *args, **kwargs):
        asked.append(n)
        return real_randperm(n, *args, **kwargs)

    monkeypatch.setattr(torch, "randperm", recording_randperm)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(offset)
    draws = 200
    for _ in range(draws):
        s = bank.sample(256, g)
        assert s[1] is None  # no class-1 entries at all
        values = s[0][:, 0].long()
        assert values.unique().numel() == 256  # without replacement
        counts += torch.bincount(values, minlength=offset).float()
    assert all(n <= 4 * 256 for n in asked), asked
    # Uniform over every stored entry, whatever case holds it: per case, the share of draws
    # matches the share of entries (expected 51200 draws in all).
    ends = [30_000, 80_000, 100_000]
    shares = [float(counts[a:b].sum()) / (draws * 256) for a, b in zip([0] + ends[:-1], ends)]
    assert shares == pytest.approx([0.3, 0.5, 0.2], abs=0.01)
    assert float(counts[: offset // 2].sum()) / (draws * 256) == pytest.approx(0.5, abs=0.01)


def test_sample_without_replacement_is_uniform_in_both_regimes():
    from CAMLSegmentationLib.occ import sample_without_replacement

    g = torch.Generator().manual_seed(1)
    for population, count in ((40, 16), (400, 16)):  # permutation, then draw-and-reject
        hits = torch.zeros(population)
        for _ in range(4000):
            idx = sample_without_replacement(population, count, g)
            assert idx.dtype == torch.long and idx.unique().numel() == count
            assert 0 <= int(idx.min()) and int(idx.max()) < population
            hits += torch.bincount(idx, minlength=population).float()
        expected = 4000 * count / population
        assert float((hits - expected).abs().max()) < 6 * expected ** 0.5
    assert sample_without_replacement(5, 5, g).sort().values.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        sample_without_replacement(3, 4, g)


def test_memory_bank_stores_only_voxels_both_models_get_right():
    torch.manual_seed(0)
    net = CAMLNet(NetworkConfig(base_filters=4, feat_dim=8))
    net.train()
    bank = MemoryBank(2, 2, 8)
    objective = CAMLObjective(net, bank, TrainingPreset(base_filters=4, feat_dim=8))
    shape = (2, 4, 4, 4)
    label = torch.randint(0, 2, shape)
    pred_v = label.clone()
    pred_a = label.clone()
    pred_v[0, 0, 0, :2] = 1 - pred_v[0, 0, 0, :2]  # V wrong here
    pred_a[1, 1, :, 0] = 1 - pred_a[1, 1, :, 0]  # A wrong here
    to_prob = lambda p: torch.stack([1.0 - p, p.float()], 1) * 0.8 + 0.1  # noqa: E731
    feat_v = torch.randn(2, 4, *shape[1:])
    feat_a = torch.randn(2, 4, *shape[1:])
    objective._update_memory(to_prob(pred_v), to_prob(pred_a), feat_v, feat_a, label, torch.tensor([1, 0]))
    assert net.projection_head1.training  # heads back in training mode afterwards
    net.eval()
    for b, case in ((0, 1), (1, 0)):
        correct = (pred_v[b] == label[b]) & (pred_a[b] == label[b])
        assert bank.slots[case][0].shape[0] + bank.slots[case][1].shape[0] == int(correct.sum())
        # Expected: per voxel, mean of the heads applied to channels-last features of V and A.
        rows = []
        for idx in torch.nonzero(correct):
            i, j, k = idx.tolist()
            with torch.no_grad():
                fv = net.projection_head1(feat_v[b, :, i, j, k][None])
                fa = net.projection_head2(feat_a[b, :, i, j, k][None])
            rows.append(((fv + fa) / 2)[0])
        expected = torch.stack(rows)
        labels_correct = label[b][correct]
        for c in (0, 1):
            assert torch.allclose(bank.slots[case][c], expected[labels_correct == c], atol=1e-5)


def test_bundled_presets_are_valid_data(tmp_path):
    paper = load_preset("paper")
    assert (paper.patch_size, paper.base_filters, paper.iterations, paper.labeled_batch,
            paper.unlabeled_batch, paper.lr, paper.lr_schedule) == ((112, 112, 80), 16, 15000, 2, 2, 0.01, "constant")
    assert (paper.memory_per_class, paper.num_filtered, paper.occ_temperature) == (256, 12800, 0.1)
    assert (paper.lambda_s, paper.lambda_c, paper.lambda_o, paper.sharpen_temperature) == (0.5, 1.0, 0.05, 0.1)
    assert paper.spacing == (0.625, 0.625, 0.625)
    cpu = load_preset("cpu")
    assert cpu.spacing == (1.25, 1.25, 1.25) and all(s % 16 == 0 for s in cpu.patch_size)
    bad = tmp_path / "bad.json"
    bad.write_text('{"patch_size": [100, 112, 80]}')
    with pytest.raises(ValueError, match="multiple of 16"):
        load_preset(bad)
    bad.write_text('{"learning_rate": 0.1}')
    with pytest.raises(ValueError, match="unknown preset field"):
        load_preset(bad)
    with pytest.raises(ValueError, match="unknown preset"):
        load_preset("gpu-fast")

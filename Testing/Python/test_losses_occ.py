"""Losses, ramp-ups and the omni-correlation consistency against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from CAMLSegmentationLib.model.losses import dice_loss, mutual_consistency_loss, sharpen, sigmoid_rampup
from CAMLSegmentationLib.model.network import CAMLNet, NetworkConfig
from CAMLSegmentationLib.model.occ import (
    MemoryBank,
    omni_correlation,
    omni_correlation_loss,
    select_confident,
)
from CAMLSegmentationLib.training.objective import CAMLObjective, learning_rate, loss_weights
from CAMLSegmentationLib.training.presets import TrainingPreset, load_preset


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
    lc, lo, lt = loss_weights(preset, 1500, 8)
    assert lc == pytest.approx(math.exp(-5 * 0.25)) and lo == pytest.approx(0.05 * math.exp(-5 * 0.25))
    assert lt == 0.0  # shift consistency is off unless a preset asks for it
    assert loss_weights(preset.with_overrides(shift_consistency=2.0), 1500, 8)[2] == pytest.approx(2 * lc)
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
    from CAMLSegmentationLib.model.occ import sample_without_replacement

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
    official = load_preset("official")
    for paper in (official, load_preset("full")):
        assert (paper.patch_size, paper.base_filters, paper.iterations, paper.labeled_batch,
                paper.unlabeled_batch, paper.lr, paper.lr_schedule) == ((112, 112, 80), 16, 15000, 2, 2, 0.01,
                                                                        "constant")
        assert (paper.memory_per_class, paper.num_filtered, paper.occ_temperature) == (256, 12800, 0.1)
        assert (paper.lambda_s, paper.lambda_c, paper.lambda_o, paper.sharpen_temperature) == (0.5, 1.0, 0.05, 0.1)
        assert paper.spacing == (0.625, 0.625, 0.625)
    # The official code trains on the stored intensities, unaugmented, in float32.
    assert (official.normalization, official.intensity_probability, official.amp) == ("none", 0.0, False)
    assert load_preset("full").normalization == "percentile"
    assert load_preset("paper") == load_preset("full")  # the old name of "full" still loads it
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


def _objective_inputs(seed: int = 0):
    """A tiny CAML net, a filled memory bank, and a labeled + unlabeled batch whose terms are all non-zero."""
    torch.manual_seed(seed)
    net = CAMLNet(NetworkConfig(base_filters=4, feat_dim=8)).train()
    bank = MemoryBank(2, 2, 8)
    for case in range(2):
        bank.update(case, torch.randn(400, 8), (torch.rand(400) < 0.3).long())
    x = torch.randn(4, 1, 16, 16, 16)
    y = (torch.rand(2, 16, 16, 16) < 0.3).long()
    return net, bank, x, y


def _run_objective(net, bank, preset, x, y, lambda_c, lambda_o, supervised_only=False):
    """One forward of the objective from a fixed RNG state, on copies (the bank and BN stats change)."""
    import copy

    objective = CAMLObjective(copy.deepcopy(net), copy.deepcopy(bank), preset, supervised_only)
    objective.memory_generator.manual_seed(5)
    torch.manual_seed(123)  # dropout and CMA draw the same masks in every run
    loss, parts = objective(x, y, torch.tensor([0, 1]), lambda_c, lambda_o)
    return loss, parts, objective


def test_objective_puts_each_weight_on_its_own_term():
    net, bank, x, y = _objective_inputs()
    preset = TrainingPreset(base_filters=4, feat_dim=8, memory_per_class=16, num_filtered=64)
    loss, parts, _ = _run_objective(net, bank, preset, x, y, 0.7, 0.3)
    loss = loss.detach()
    s, c, o = parts["loss_s"], parts["loss_c"], parts["loss_o"]
    assert min(s, c, o) > 0
    assert float(loss) == pytest.approx(0.5 * s + 0.7 * c + 0.3 * o, rel=1e-6)
    # Zeroing one weight removes exactly its term; the terms themselves do not depend on the weights.
    for changes, missing in (({"lambda_c": 0.0}, 0.7 * c), ({"lambda_o": 0.0}, 0.3 * o)):
        args = {"lambda_c": 0.7, "lambda_o": 0.3, **changes}
        loss2, parts2, _ = _run_objective(net, bank, preset, x, y, args["lambda_c"], args["lambda_o"])
        assert (parts2["loss_s"], parts2["loss_c"], parts2["loss_o"]) == (s, c, o)
        assert float(loss2.detach()) == pytest.approx(float(loss) - missing, rel=1e-6)
    loss3, parts3, _ = _run_objective(net, bank, preset.with_overrides(lambda_s=0.0), x, y, 0.7, 0.3)
    assert parts3["loss_s"] == s and float(loss3.detach()) == pytest.approx(float(loss) - 0.5 * s, rel=1e-6)
    loss4, _, _ = _run_objective(net, bank, preset.with_overrides(lambda_s=2.0), x, y, 0.7, 0.3)
    assert float(loss4.detach()) == pytest.approx(float(loss) + 1.5 * s, rel=1e-6)

    # Each term is computed on the right part of the batch: Dice on the labeled half only,
    # consistency on all four samples (same forward: same seed for dropout and CMA).
    import copy

    torch.manual_seed(123)
    with torch.no_grad():
        logits_v, logits_a, _, _ = copy.deepcopy(net)(x)
    pv, pa = torch.softmax(logits_v, 1), torch.softmax(logits_a, 1)
    fg = y == 1
    assert s == pytest.approx(float(dice_loss(pv[:2, 1], fg) + dice_loss(pa[:2, 1], fg)), rel=1e-5)
    assert c == pytest.approx(float(mutual_consistency_loss(pv, pa, 0.1)), rel=1e-5)


def test_supervised_only_objective_is_the_weighted_dice_alone():
    net, bank, x, y = _objective_inputs()
    preset = TrainingPreset(base_filters=4, feat_dim=8, memory_per_class=16, num_filtered=64)
    _, full, _ = _run_objective(net, bank, preset, x[:2], y, 0.7, 0.3)
    loss, parts, objective = _run_objective(net, bank, preset, x[:2], y, 0.7, 0.3, supervised_only=True)
    assert set(parts) == {"loss", "loss_s"}
    assert parts["loss_s"] == full["loss_s"]
    assert float(loss.detach()) == pytest.approx(0.5 * parts["loss_s"], rel=1e-6)
    loss.backward()
    n = objective.net
    assert all(p.grad is None for h in (n.projection_head1, n.prediction_head1, n.projection_head2,
                                        n.prediction_head2) for p in h.parameters())
    assert n.encoder2.block_one.conv[0].weight.grad is not None  # model A still learns from the labels
    # The memory bank is neither updated nor sampled: left exactly as it was.
    assert all(torch.equal(a, b) for sa, sb in zip(bank.slots, objective.bank.slots) for a, b in zip(sa, sb))


def _head_inputs(objective):
    """Record how many rows go through V's projection head in the OCC part (not the memory update)."""
    rows = []
    objective.net.projection_head1.register_forward_hook(
        lambda module, inputs, output: rows.append(inputs[0].shape[0]) if module.training else None)
    return rows


@pytest.mark.parametrize("num_filtered", [64, 100_000])
def test_occ_heads_on_selected_passes_only_the_picked_voxels(num_filtered):
    import copy

    net, bank, x, y = _objective_inputs()
    results = {}
    for mode in ("agreeing", "selected"):
        preset = TrainingPreset(base_filters=4, feat_dim=8, memory_per_class=16, num_filtered=num_filtered,
                                occ_heads_on=mode)
        objective = CAMLObjective(copy.deepcopy(net), copy.deepcopy(bank), preset)
        objective.memory_generator.manual_seed(5)
        rows = _head_inputs(objective)
        torch.manual_seed(123)
        loss, parts = objective(x, y, torch.tensor([0, 1]), 1.0, 1.0)
        loss.backward()
        grads = [p.grad for p in objective.net.prediction_head1.parameters()]
        assert all(g is not None and bool(g.abs().sum() > 0) for g in grads)  # the OCC term trains the heads
        results[mode] = (rows, parts["loss_o"])

    # What the heads see: every V/A-agreeing unlabeled voxel, or only the per-class top num_filtered.
    torch.manual_seed(123)
    with torch.no_grad():
        logits_v, logits_a, _, _ = copy.deepcopy(net)(x)
    pv, pa = torch.softmax(logits_v[2:], 1), torch.softmax(logits_a[2:], 1)
    agree = pv.argmax(1) == pa.argmax(1)
    per_class = [int((agree & (pv.argmax(1) == c)).sum()) for c in (0, 1)]
    assert results["agreeing"][0] == [sum(per_class)]
    assert results["selected"][0] == [sum(min(n, num_filtered) for n in per_class)]
    if num_filtered >= sum(per_class):
        # Nothing filtered out: the same voxels (in another order) give the same loss.
        assert results["selected"][1] == pytest.approx(results["agreeing"][1], rel=1e-4)
    else:
        assert results["selected"][0][0] < results["agreeing"][0][0]


def test_shift_consistency_compares_the_overlap_of_each_pair():
    from CAMLSegmentationLib.model.losses import shift_consistency_loss
    from CAMLSegmentationLib.training.augment import random_shifted_pair

    rng = np.random.default_rng(0)
    image = rng.random((20, 18, 14)).astype(np.float32)
    seen = set()
    for _ in range(30):
        first, second, shift = random_shifted_pair(image, (8, 8, 6), rng, (3, 3, 2))
        seen.add(shift)
        pair = torch.from_numpy(np.stack([first, second]))[:, None]
        shifts = torch.tensor([shift])
        # A prediction that is a function of the voxel alone agrees exactly on the overlap ...
        assert float(shift_consistency_loss(torch.sigmoid(pair), shifts)) == 0.0
        # ... and one that depends on the position in the window does not, unless nothing moved.
        ramp = torch.linspace(0, 1, 8).view(1, 1, 8, 1, 1)
        moved = float(shift_consistency_loss(torch.sigmoid(pair) + ramp, shifts))
        assert (moved > 0) == (shift[0] != 0)
    assert len(seen) > 10 and {abs(d) for s in seen for d in s} >= {0, 1, 2}
    assert max(abs(s[0]) for s in seen) <= 3 and max(abs(s[2]) for s in seen) <= 2
    # The crops stay inside the image: never more shift than the room around the patch, and an
    # axis no longer than the patch is not shifted at all.
    for _ in range(30):
        first, second, shift = random_shifted_pair(image[:10, :8], (8, 8, 6), rng, (3, 3, 2))
        assert abs(shift[0]) <= 2 and shift[1] == 0 and abs(shift[2]) <= 2
        first, second, shift = random_shifted_pair(image, (8, 8, 6), rng, (30, 30, 30))
        assert (first > 0).all() and (second > 0).all()  # no padding: the image is positive
        assert abs(shift[0]) <= 12 and abs(shift[1]) <= 10 and abs(shift[2]) <= 8

"""Metrics against an independent brute-force computation and against values worked out by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from CAMLSegmentationLib.inference.metrics import (
    CaseMetrics,
    asd,
    dice,
    evaluate_case,
    hd95,
    jaccard,
    summarize,
)


def brute_surface(mask: np.ndarray) -> list:
    """Coordinates of mask voxels with a face-neighbour outside the mask or outside the array."""
    points = []
    for idx in zip(*np.nonzero(mask)):
        for axis, step in itertools.product(range(3), (-1, 1)):
            n = list(idx)
            n[axis] += step
            if not (0 <= n[axis] < mask.shape[axis]) or not mask[tuple(n)]:
                points.append(idx)
                break
    return points


def brute_distances(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    pa = np.array(brute_surface(a), float) * spacing
    pb = np.array(brute_surface(b), float) * spacing
    return np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)).min(axis=1)


@pytest.mark.parametrize("seed", range(6))
def test_metrics_match_brute_force_on_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(5, 10, size=3))
    pred = rng.random(shape) > rng.uniform(0.4, 0.8)
    truth = rng.random(shape) > rng.uniform(0.4, 0.8)
    spacing = np.array([1.0, 1.0, 1.0]) if seed % 2 == 0 else rng.uniform(0.5, 2.5, size=3)
    p_to_t = brute_distances(pred, truth, spacing)
    t_to_p = brute_distances(truth, pred, spacing)
    inter, total = np.logical_and(pred, truth).sum(), pred.sum() + truth.sum()
    assert dice(pred, truth) == pytest.approx(2 * inter / total)
    assert jaccard(pred, truth) == pytest.approx(inter / np.logical_or(pred, truth).sum())
    assert hd95(pred, truth, spacing) == pytest.approx(np.percentile(np.hstack([p_to_t, t_to_p]), 95))
    assert asd(pred, truth, spacing) == pytest.approx(p_to_t.mean())


def test_metrics_match_brute_force_for_small_objects_away_from_the_border() -> None:
    """Exercises the bounding-box crop: objects deep inside a larger array."""
    rng = np.random.default_rng(7)
    pred = np.zeros((30, 25, 20), bool)
    truth = np.zeros_like(pred)
    pred[10:16, 8:13, 5:11] = rng.random((6, 5, 6)) > 0.3
    truth[12:19, 9:15, 6:12] = rng.random((7, 6, 6)) > 0.3
    spacing = np.array([0.625, 0.625, 2.0])
    p_to_t, t_to_p = brute_distances(pred, truth, spacing), brute_distances(truth, pred, spacing)
    assert hd95(pred, truth, spacing) == pytest.approx(np.percentile(np.hstack([p_to_t, t_to_p]), 95))
    assert asd(pred, truth, spacing) == pytest.approx(p_to_t.mean())


def shifted_cubes():
    """A 4-voxel cube and the same cube shifted one voxel along i, inside a 10^3 grid."""
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[3:7, 3:7, 3:7] = True
    b[4:8, 3:7, 3:7] = True
    return a, b


def test_cube_against_shifted_cube_known_values() -> None:
    # Worked out by hand: overlap 4*4*3 = 48 of 64 voxels each -> Dice 96/128, Jaccard 48/80.
    # The 56 surface voxels of A: the 16 of its i=3 face and the 4 centre voxels of its i=6
    # face are 1 voxel from B's surface, the other 36 lie on B's surface.
    a, b = shifted_cubes()
    assert dice(a, b) == pytest.approx(0.75)
    assert jaccard(a, b) == pytest.approx(0.6)
    assert asd(a, b) == pytest.approx(20 / 56)
    assert hd95(a, b) == pytest.approx(1.0)  # 40 ones among 112 pooled distances: 95th percentile is 1
    # With 2 mm voxels along the shift, the 16 face voxels are 2 mm away, the 4 centre voxels
    # 1 mm (the side faces of B are closer than its end face).
    assert asd(a, b, (2.0, 1.0, 1.0)) == pytest.approx((16 * 2 + 4 * 1) / 56)
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(2.0)


def test_single_voxels_give_their_euclidean_distance() -> None:
    a = np.zeros((8, 8, 3), bool)
    b = np.zeros_like(a)
    a[1, 1, 1] = True
    b[4, 5, 1] = True
    assert hd95(a, b) == pytest.approx(5.0)
    assert asd(a, b) == pytest.approx(5.0)
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(math.sqrt(36 + 16))


def test_asd_is_one_directional_as_in_medpy() -> None:
    a = np.zeros((12, 12, 12), bool)
    b = np.zeros_like(a)
    a[2:5, 2:5, 2:5] = True  # small
    b[2:10, 2:10, 2:10] = True  # large, containing a
    assert asd(a, b) != pytest.approx(asd(b, a))
    assert asd(a, b) == pytest.approx(brute_distances(a, b, np.ones(3)).mean())


def test_empty_masks_documented_values() -> None:
    empty = np.zeros((5, 5, 5), bool)
    full = np.zeros_like(empty)
    full[1:4, 1:4, 1:4] = True
    both = evaluate_case(empty, empty, (1, 1, 1))
    assert (both.dice, both.jaccard, both.hd95_voxels, both.asd_voxels) == (1.0, 1.0, 0.0, 0.0)
    for pred, truth in ((empty, full), (full, empty)):
        one = evaluate_case(pred, truth, (1, 1, 1))
        assert one.dice == 0.0 and one.jaccard == 0.0
        assert math.isnan(one.hd95_voxels) and math.isnan(one.asd_mm)


def test_evaluate_case_reports_voxels_and_mm() -> None:
    a, b = shifted_cubes()
    m = evaluate_case(a, b, (2.0, 1.0, 1.0))
    assert m.hd95_voxels == pytest.approx(1.0) and m.hd95_mm == pytest.approx(2.0)
    assert m.asd_voxels == pytest.approx(20 / 56) and m.asd_mm == pytest.approx(36 / 56)
    with pytest.raises(ValueError, match="shape"):
        evaluate_case(a, b[:-1], (1, 1, 1))


def test_summary_skips_undefined_distances() -> None:
    cases = [CaseMetrics(0.9, 0.8, 2.0, 1.0, 2.5, 1.2), CaseMetrics(0.7, 0.6, 4.0, 3.0, 5.0, 3.6),
             CaseMetrics(0.0, 0.0, float("nan"), float("nan"), float("nan"), float("nan"))]
    s = summarize(cases)
    assert s["dice"]["mean"] == pytest.approx(1.6 / 3) and s["dice"]["n"] == 3
    assert s["hd95_voxels"]["mean"] == pytest.approx(3.0) and s["hd95_voxels"]["n"] == 2
    assert s["hd95_voxels"]["std"] == pytest.approx(1.0)


def test_metrics_agree_with_medpy() -> None:
    """The paper's numbers come from medpy.metric.binary: the same masks give the same values here."""
    medpy_binary = pytest.importorskip("medpy.metric.binary", reason="medpy is not installed (pip install medpy)")
    rng = np.random.default_rng(7)
    grid = np.meshgrid(*[np.arange(n, dtype=float) for n in (40, 36, 24)], indexing="ij")
    for case in range(5):
        # Two overlapping noisy ellipsoids, one touching the array border in some cases.
        def blob(centre, radii):
            inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
            return inside ^ (rng.random(inside.shape) < 0.01)

        centre = rng.uniform([10, 10, 6], [30, 26, 18])
        truth = blob(centre, rng.uniform(5, 12, 3))
        pred = blob(centre + rng.normal(0, 2, 3), rng.uniform(5, 12, 3))
        spacing = (0.625, 0.625, 1.25 if case % 2 else 0.625)
        assert dice(pred, truth) == pytest.approx(medpy_binary.dc(pred, truth), abs=1e-12)
        assert jaccard(pred, truth) == pytest.approx(medpy_binary.jc(pred, truth), abs=1e-12)
        # The paper's protocol: distances in voxels (no spacing); and in mm with the spacing.
        assert hd95(pred, truth) == pytest.approx(medpy_binary.hd95(pred, truth), rel=1e-9)
        assert asd(pred, truth) == pytest.approx(medpy_binary.asd(pred, truth), rel=1e-9)
        assert hd95(pred, truth, spacing) == pytest.approx(medpy_binary.hd95(pred, truth, spacing), rel=1e-9)
        assert asd(pred, truth, spacing) == pytest.approx(medpy_binary.asd(pred, truth, spacing), rel=1e-9)

"""Where CAML is unsure: the connected regions of the V/A disagreement map, largest first (#22 item 8)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from CAMLSegmentationLib.inference.regions import DISAGREEMENT_THRESHOLD, MIN_REGION_VOXELS, uncertain_regions

PACKAGE_PARENT = Path(__file__).resolve().parents[2] / "CAMLSegmentation"


def _map(shape=(40, 30, 20)):
    return np.zeros(shape, dtype=np.float32)


def test_regions_come_largest_first_with_a_center_inside_each():
    m = _map()
    m[2:6, 2:6, 2:6] = 0.9          # 64 voxels, the highest peak
    m[20:30, 10:15, 5:9] = 0.7      # 200 voxels
    m[35:38, 25:28, 15:18] = 0.6    # 27 voxels
    m[10, 20, 10] = 1.0             # one voxel: a speck, left out
    regions = uncertain_regions(m)
    assert [r.voxels for r in regions] == [200, 64, 27]
    big = regions[0]
    assert big.start == (20, 10, 5) and big.stop == (30, 15, 9)
    assert big.peak == pytest.approx(0.7) and big.mean == pytest.approx(0.7)
    for r in regions:
        assert m[r.center] > DISAGREEMENT_THRESHOLD
        assert all(s <= c < e for s, c, e in zip(r.start, r.center, r.stop))


def test_the_center_of_a_curved_region_lies_inside_it():
    m = _map((30, 30, 5))
    m[5:25, 5, 2] = 0.8   # an L: its centre of mass is off the voxels
    m[24, 5:25, 2] = 0.8
    (region,) = uncertain_regions(m)
    assert region.voxels == 39 and m[region.center] == pytest.approx(0.8)


def test_threshold_and_connectivity():
    m = _map()
    m[5:10, 5:10, 5:10] = 0.4
    assert uncertain_regions(m) == []  # below the default threshold
    assert [r.voxels for r in uncertain_regions(m, threshold=0.3)] == [125]
    m2 = _map()
    m2[5:8, 5:8, 5:8] = 0.9
    m2[8:11, 8:11, 8:11] = 0.9  # touches the first block only by a corner: one region (26-connectivity)
    assert [r.voxels for r in uncertain_regions(m2)] == [54]
    m2[5, 5, 5] = 0.5  # exactly the threshold: not above it
    assert uncertain_regions(m2)[0].voxels == 53


def test_small_regions_and_ties():
    m = _map()
    m[0:2, 0:2, 0:2] = 0.9   # 8 voxels: kept at the default minimum
    m[10:12, 0:2, 0:2] = 0.95
    m[20, 0, 0:MIN_REGION_VOXELS - 1] = 1.0  # one voxel short: dropped
    regions = uncertain_regions(m)
    assert [r.voxels for r in regions] == [8, 8]
    assert [r.peak for r in regions] == pytest.approx([0.95, 0.9])  # a tie goes to the higher peak
    assert [r.voxels for r in uncertain_regions(m, min_voxels=1)] == [8, 8, 7]


def test_empty_nan_and_bad_input():
    assert uncertain_regions(_map()) == []
    m = _map()
    m[1:4, 1:4, 1:4] = np.nan  # unreadable voxels are not disputed
    m[10:13, 10:13, 10:13] = 0.8
    assert [r.voxels for r in uncertain_regions(m)] == [27]
    with pytest.raises(ValueError, match="3-D"):
        uncertain_regions(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="threshold"):
        uncertain_regions(_map(), threshold=1.0)


def test_the_module_runs_without_torch():
    """Inside Slicer's process torch is never imported: the module must not need it."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np\n"
            "from CAMLSegmentationLib.inference.regions import uncertain_regions\n"
            "m = np.zeros((9, 9, 9), np.float32); m[2:5, 2:5, 2:5] = 0.9\n"
            "print(uncertain_regions(m)[0].voxels)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(PACKAGE_PARENT)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "27"

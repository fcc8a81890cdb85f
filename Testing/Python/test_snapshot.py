"""The snapshot picture (`caml segment --snapshot OUT.png`): a real PNG, read back, with the mask visible."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from CAMLSegmentationLib import cli
from CAMLSegmentationLib.io.snapshot import (
    GAP,
    PANEL_SIZE,
    decode_png,
    encode_png,
    render_snapshot,
    snapshot_shape,
    write_snapshot,
)
from CAMLSegmentationLib.io.volume import SEGMENT_COLOR_RGB, Volume, read_image, write_image
from inference_helpers import GEOMETRIES, blob_volume, one_thread, tiny_checkpoint

_threads = pytest.fixture(autouse=True)(one_thread)


def _cube_case(direction=None):
    rng = np.random.default_rng(3)
    image = rng.normal(100.0, 15.0, size=(48, 40, 30)).astype(np.float32)
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[14:30, 12:26, 8:20] = 1
    image[mask > 0] += 120.0
    volume = Volume(image, spacing=(0.8, 0.8, 1.6), origin=(0.0, 0.0, 0.0),
                    direction=np.eye(3) if direction is None else direction)
    return volume, mask


def _is_grey(pixels: np.ndarray) -> np.ndarray:
    return (pixels[..., 0] == pixels[..., 1]) & (pixels[..., 1] == pixels[..., 2])


@pytest.mark.parametrize("geometry", ["axis_aligned", "flipped", "oblique"])
def test_snapshot_png_reads_back_with_the_mask_coloured(tmp_path: Path, geometry: str) -> None:
    volume, mask = _cube_case(GEOMETRIES[geometry])
    path = write_snapshot(tmp_path / "shot.png", volume, mask)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    picture = decode_png(data)
    assert picture.shape == snapshot_shape() == (PANEL_SIZE, 3 * PANEL_SIZE + 2 * GAP, 3)
    for n in range(3):  # every view shows the mask (coloured) and the image around it (grey)
        panel = picture[:, n * (PANEL_SIZE + GAP):n * (PANEL_SIZE + GAP) + PANEL_SIZE]
        coloured = ~_is_grey(panel)
        assert 0.01 < coloured.mean() < 0.6, n
        # The outline is drawn in the segment colour itself.
        assert (panel[coloured] == SEGMENT_COLOR_RGB).all(axis=1).any(), n
        # Mask pixels differ from the background: reddish fill vs grey.
        reds = panel[coloured].astype(int)
        assert (reds[:, 0] > reds[:, 2]).mean() > 0.9, n
        assert _is_grey(panel[_is_grey(panel)]).all()
        assert len(np.unique(panel[~coloured][:, 0])) > 20, n  # textured grey image, not a flat fill
    # The picture is the same whether written or rendered in memory.
    np.testing.assert_array_equal(picture, render_snapshot(volume, mask))


def test_mask_centre_is_coloured_and_far_corner_is_not() -> None:
    volume, mask = _cube_case()
    picture = render_snapshot(volume, mask)
    axial = picture[:, :PANEL_SIZE]
    # Axial panel: x (patient left) to the right, y (posterior) down; the grid is 38.4 x 32 mm, so the
    # panel is filled across and letterboxed top and bottom.
    rows = int(round(32.0 / 38.4 * PANEL_SIZE))
    top = (PANEL_SIZE - rows) // 2
    centre_x = int((22 / 48) * PANEL_SIZE)
    centre_y = top + int((19 / 40) * rows)
    assert not _is_grey(axial[centre_y, centre_x])
    assert _is_grey(axial[top + 3, 3])
    assert (axial[:top - 1] == 0).all()  # letterbox


def test_empty_mask_and_uncertainty_overlay() -> None:
    volume, mask = _cube_case()
    plain = render_snapshot(volume, np.zeros_like(mask))
    assert _is_grey(plain[:, :PANEL_SIZE]).all()
    uncertainty = np.zeros(mask.shape, dtype=np.float32)
    uncertainty[10:34, 10:30, 5:25] = 0.8
    tinted = render_snapshot(volume, mask, uncertainty)
    changed = (tinted != render_snapshot(volume, mask)).any(axis=2)
    assert changed.mean() > 0.02
    # Yellow tint: red and green above blue where only uncertainty is shown.
    only_uncertain = changed & _is_grey(render_snapshot(volume, mask))
    px = tinted[only_uncertain].astype(int)
    assert (px[:, 1] > px[:, 2]).all()
    with pytest.raises(ValueError, match="grid"):
        render_snapshot(volume, mask[:-1])


def test_png_codec_round_trip_and_filters() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(rgb)), rgb)
    # A PNG written with the Sub/Up/Average/Paeth filters (as other encoders do) decodes too.
    pil = pytest.importorskip("PIL.Image")
    import io

    buffer = io.BytesIO()
    pil.fromarray(rgb).save(buffer, format="PNG", optimize=True)
    np.testing.assert_array_equal(decode_png(buffer.getvalue()), rgb)
    with pytest.raises(ValueError, match="PNG"):
        decode_png(b"not a png")
    broken = bytearray(encode_png(rgb))
    broken[20] ^= 0xFF
    with pytest.raises((ValueError, zlib.error)):
        decode_png(bytes(broken))


def test_segment_snapshot_option_writes_the_picture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAML_HOME", str(tmp_path / "home"))
    weights = tiny_checkpoint(tmp_path / "tiny.pt", window=(16, 16, 16))
    volume = blob_volume(shape=(30, 26, 18), direction=GEOMETRIES["oblique"])
    src = write_image(volume.array, volume, tmp_path / "mri.nrrd")
    shot, unc = tmp_path / "out" / "mri.png", tmp_path / "out" / "u.nrrd"
    code = cli.main(["segment", str(src), str(tmp_path / "out" / "la.seg.nrrd"), "--weights", str(weights),
                     "--device", "cpu", "--progress", "none", "--uncertainty", str(unc),
                     "--snapshot", str(shot)])
    assert code == 0
    picture = decode_png(shot.read_bytes())
    assert picture.shape == snapshot_shape()
    mask = read_image(tmp_path / "out" / "la.seg.nrrd").array
    expected = render_snapshot(read_image(src), mask, read_image(unc).array)
    np.testing.assert_array_equal(picture, expected)

    assert cli.main(["segment", str(src), str(tmp_path / "x.seg.nrrd"), "--weights", str(weights),
                     "--device", "cpu", "--progress", "none", "--snapshot", str(tmp_path / "x.jpg")]) == 2
    assert not (tmp_path / "x.seg.nrrd").exists()

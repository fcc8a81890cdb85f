"""A picture of a segmentation: axial, coronal and sagittal slices through the mask, with its outline.

``caml segment --snapshot OUT.png`` and the demo write one, so a result can be
judged at a glance without opening a viewer. Everything here is numpy plus a
small PNG encoder on ``zlib`` (no plotting library): the picture is cheap to
make on any machine the engine runs on.

Layout: three square panels side by side, each a slice through the mask's
centre (through the image centre when the mask is empty), scaled to the same
size with the voxel aspect kept and letterboxed in black:

* axial: patient right on the left of the picture, anterior at the top;
* coronal: patient right on the left, superior at the top;
* sagittal: anterior on the left, superior at the top.

The image is shown in grey (1st to 99th percentile window); the mask is a
translucent fill in the segment colour with a solid outline; when an
uncertainty map is given, voxels where the two sub-models disagree are tinted
yellow, more strongly the more they disagree.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from .volume import SEGMENT_COLOR_RGB, Volume

PathLike = Union[str, Path]

#: Side of one square panel in pixels, and the dark gap between panels.
PANEL_SIZE = 256
GAP = 4
FILL_OPACITY = 0.45
OUTLINE_WIDTH = 2  # pixels
UNCERTAINTY_RGB = (255, 230, 0)
UNCERTAINTY_FLOOR = 0.2  # below this disagreement nothing is tinted


def snapshot_shape(panel_size: int = PANEL_SIZE) -> Tuple[int, int, int]:
    """(height, width, 3) of the picture ``render_snapshot`` makes."""
    return panel_size, 3 * panel_size + 2 * GAP, 3


# --------------------------------------------------------------------------- geometry


def _to_lps_axes(volume: Volume, *arrays: Optional[np.ndarray]) -> Tuple[List[Optional[np.ndarray]], np.ndarray]:
    """Arrays re-indexed so axis 0 runs to patient Left, 1 to Posterior, 2 to Superior, and their spacing.

    Each voxel axis is matched to the physical axis it is closest to, so an
    oblique volume is shown as its nearest axis-aligned view (good enough for a
    picture; nothing is resampled).
    """
    direction = np.asarray(volume.direction, dtype=float)
    physical = [int(np.argmax(np.abs(direction[:, a]))) for a in range(3)]
    if sorted(physical) != [0, 1, 2]:  # a degenerate direction matrix: keep the file's order
        physical = [0, 1, 2]
    order = [physical.index(p) for p in range(3)]  # voxel axis showing physical axis p
    flips = [direction[p, order[p]] < 0 for p in range(3)]
    spacing = np.asarray(volume.spacing, dtype=float)[order]
    out: List[Optional[np.ndarray]] = []
    for array in arrays:
        if array is None:
            out.append(None)
            continue
        a = np.transpose(np.asarray(array), order)
        for p in range(3):
            if flips[p]:
                a = np.flip(a, axis=p)
        out.append(a)
    return out, spacing


def _centre(mask: np.ndarray) -> Tuple[int, int, int]:
    """The voxel at the mask's centre of mass, or the middle of the grid when it is empty."""
    points = np.nonzero(mask)
    if points[0].size == 0:
        return tuple(n // 2 for n in mask.shape)  # type: ignore[return-value]
    return tuple(int(round(float(p.mean()))) for p in points)  # type: ignore[return-value]


def _panels(arrays: Sequence[Optional[np.ndarray]], spacing: np.ndarray,
            centre: Tuple[int, int, int]) -> List[Tuple[List[Optional[np.ndarray]], Tuple[float, float]]]:
    """For each view, the 2D slices (rows top to bottom, columns left to right) and (row mm, column mm)."""
    i, j, k = centre
    views = []
    # axial: rows = anterior -> posterior (y), columns = right -> left (x)
    views.append(([None if a is None else a[:, :, k].T for a in arrays], (spacing[1], spacing[0])))
    # coronal: rows = superior -> inferior (z reversed), columns = right -> left (x)
    views.append(([None if a is None else a[:, j, :].T[::-1] for a in arrays], (spacing[2], spacing[0])))
    # sagittal: rows = superior -> inferior, columns = anterior -> posterior (y)
    views.append(([None if a is None else a[i, :, :].T[::-1] for a in arrays], (spacing[2], spacing[1])))
    return views


def _fit(shape: Tuple[int, int], pixel_mm: Tuple[float, float], size: int) -> Tuple[np.ndarray, np.ndarray, int, int]:
    """Nearest-neighbour row and column indices that scale a slice into a size x size square, aspect kept."""
    height_mm, width_mm = shape[0] * pixel_mm[0], shape[1] * pixel_mm[1]
    scale = size / max(height_mm, width_mm)
    rows = max(1, min(size, int(round(height_mm * scale))))
    cols = max(1, min(size, int(round(width_mm * scale))))
    r = np.minimum((np.arange(rows) + 0.5) * shape[0] / rows, shape[0] - 1).astype(int)
    c = np.minimum((np.arange(cols) + 0.5) * shape[1] / cols, shape[1] - 1).astype(int)
    return r, c, (size - rows) // 2, (size - cols) // 2


def _erode(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    return (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1]
            & padded[1:-1, :-2] & padded[1:-1, 2:])


def _outline(mask: np.ndarray, width: int = OUTLINE_WIDTH) -> np.ndarray:
    """The band of a 2D mask's pixels within ``width`` 4-neighbour steps of its border."""
    inner = mask
    for _ in range(width):
        inner = _erode(inner)
    return mask & ~inner


# --------------------------------------------------------------------------- rendering


def render_snapshot(volume: Volume, mask: np.ndarray, uncertainty: Optional[np.ndarray] = None,
                    panel_size: int = PANEL_SIZE) -> np.ndarray:
    """The picture as a uint8 ``[rows, columns, 3]`` RGB array of shape ``snapshot_shape(panel_size)``.

    ``mask`` (nonzero = inside) and ``uncertainty`` (0..1) are ``[i, j, k]``
    arrays on ``volume``'s grid.
    """
    image = np.asarray(volume.array, dtype=np.float32)
    if tuple(np.shape(mask)) != image.shape or (uncertainty is not None and
                                                tuple(np.shape(uncertainty)) != image.shape):
        raise ValueError(f"mask and uncertainty must be on the image's grid {image.shape}")
    (image, mask_lps, unc), spacing = _to_lps_axes(volume, image, np.asarray(mask) > 0, uncertainty)
    low, high = np.percentile(image, [1.0, 99.0])
    grey_scale = 255.0 / max(float(high - low), 1e-6)
    colour = np.asarray(SEGMENT_COLOR_RGB, dtype=np.float32)
    tint = np.asarray(UNCERTAINTY_RGB, dtype=np.float32)

    height, width, _ = snapshot_shape(panel_size)
    picture = np.zeros((height, width, 3), dtype=np.uint8)
    picture[:, :] = (24, 24, 24)  # the gaps
    for n, (slices, pixel_mm) in enumerate(_panels([image, mask_lps, unc], spacing, _centre(mask_lps))):
        grey, inside, disagreement = slices
        r, c, top, left = _fit(grey.shape, pixel_mm, panel_size)
        g = np.clip((grey[np.ix_(r, c)] - low) * grey_scale, 0, 255)
        rgb = np.repeat(g[:, :, None], 3, axis=2)
        if disagreement is not None:
            u = np.clip(disagreement[np.ix_(r, c)], 0.0, 1.0)
            alpha = np.where(u > UNCERTAINTY_FLOOR, 0.15 + 0.5 * u, 0.0)[:, :, None]
            rgb = rgb * (1 - alpha) + tint * alpha
        m = inside[np.ix_(r, c)]
        rgb[m] = rgb[m] * (1 - FILL_OPACITY) + colour * FILL_OPACITY
        rgb[_outline(m)] = colour
        panel = np.zeros((panel_size, panel_size, 3), dtype=np.uint8)
        panel[top:top + len(r), left:left + len(c)] = np.round(rgb).astype(np.uint8)
        x0 = n * (panel_size + GAP)
        picture[:, x0:x0 + panel_size] = panel
    return picture


# --------------------------------------------------------------------------- PNG


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB ``[rows, columns, 3]`` array as PNG bytes (no filtering, zlib level 9)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB array [rows, columns, 3], got shape {rgb.shape}")
    rows, cols, _ = rgb.shape
    raw = np.concatenate([np.zeros((rows, 1), dtype=np.uint8), rgb.reshape(rows, cols * 3)], axis=1)
    header = struct.pack(">IIBBBBB", cols, rows, 8, 2, 0, 0, 0)  # 8-bit, truecolour, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 9)) + _chunk(b"IEND", b""))


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes (8-bit grey, RGB or RGBA, not interlaced) as a uint8 ``[rows, columns, channels]`` array."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if zlib.crc32(kind + body) & 0xFFFFFFFF != struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]:
            raise ValueError(f"PNG chunk {kind!r}: CRC mismatch")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    if header is None:
        raise ValueError("PNG without IHDR")
    cols, rows, depth, colour_type, _, _, interlace = header
    channels = {0: 1, 2: 3, 6: 4}.get(colour_type)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"unsupported PNG (bit depth {depth}, colour type {colour_type}, interlace {interlace})")
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8).reshape(rows, 1 + cols * channels)
    out = np.zeros((rows, cols * channels), dtype=np.int32)
    for y in range(rows):  # undo the per-row filters (PNG spec, section 9)
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        prev = out[y - 1] if y else np.zeros_like(line)
        if kind == 0:
            out[y] = line
        elif kind == 2:
            out[y] = (line + prev) % 256
        elif kind in (1, 3, 4):
            row = np.zeros_like(line)
            for x in range(line.size):
                a = row[x - channels] if x >= channels else 0
                b = prev[x]
                if kind == 1:
                    predictor = a
                elif kind == 3:
                    predictor = (a + b) // 2
                else:
                    c = prev[x - channels] if x >= channels else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    predictor = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                row[x] = (line[x] + predictor) % 256
            out[y] = row
        else:
            raise ValueError(f"PNG row {y}: unknown filter type {kind}")
    return out.astype(np.uint8).reshape(rows, cols, channels)


def write_snapshot(path: PathLike, volume: Volume, mask: np.ndarray, uncertainty: Optional[np.ndarray] = None,
                   panel_size: int = PANEL_SIZE) -> Path:
    """Render and write the picture to ``path`` (a ``.png``), appearing complete or not at all."""
    from .files import atomic_output

    path = Path(path)
    png = encode_png(render_snapshot(volume, mask, uncertainty, panel_size))
    with atomic_output(path) as tmp:
        tmp.write_bytes(png)
    return path

"""A synthetic, MRI-like chest phantom with a left-atrium-like structure, made from nothing but numpy.

Used where a picture or a run needs something that looks like a cardiac MRI
but no patient data may be used: the demo on a machine without the LA data,
the README and Extensions Index screenshot, and Slicer's Sample Data entry.
It is *not* derived from any scan: every structure is an analytic shape
deformed by smooth random fields (numpy only).

What it holds (physical axes LPS: i to patient left, j to posterior, k to superior):

* a crop around the heart, as the LA benchmark's are: textured soft tissue
  with a dark lung at each side, the spine and the descending aorta behind;
* the left ventricle in front (bright blood pool inside a darker
  myocardium) and, in the middle, the left atrium: a wide, flat, lobulated
  bright blob with a thin dark wall and four pulmonary veins leaving it;
* soft tissue with a smooth texture, a multiplicative coil bias field and
  Rician-like noise, as in a magnitude MRI.

``mri_phantom`` returns the image and the atrium's own mask (veins cut where
they leave the atrium body), so a run on it can be scored.
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np

from .volume import Volume


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], sigma_voxels: Union[float, Sequence[float]]
                  ) -> np.ndarray:
    """Gaussian-smoothed white noise (periodic), rescaled to zero mean and unit standard deviation.

    The smoothing is a product in Fourier space, numpy only, so the phantom can be
    made in any Python that has numpy (Slicer's Sample Data included).
    """
    shape = tuple(int(n) for n in shape)
    sigma = np.broadcast_to(np.asarray(sigma_voxels, dtype=np.float64), (3,))
    noise = rng.standard_normal(shape).astype(np.float32)
    freqs = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    transfer = np.ones([len(f) for f in freqs], dtype=np.float64)
    for axis, (f, s) in enumerate(zip(freqs, sigma)):
        view = [1, 1, 1]
        view[axis] = len(f)
        transfer = transfer * np.exp(-2.0 * (np.pi * s * f) ** 2).reshape(view)
    field = np.fft.irfftn(np.fft.rfftn(noise) * transfer, s=shape, axes=(0, 1, 2)).astype(np.float32)
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _tube(points: np.ndarray, start: np.ndarray, end: np.ndarray, radius: float) -> np.ndarray:
    """Voxels (given as an [..., 3] mm grid) within ``radius`` mm of the segment start-end."""
    axis = end - start
    t = np.clip(((points - start) @ axis) / float(axis @ axis), 0.0, 1.0)
    nearest = start + t[..., None] * axis
    return np.linalg.norm(points - nearest, axis=-1) <= radius


#: Seed of the phantom the demo, the README picture and the Slicer module's sample data use.
PHANTOM_SEED = 1


def mri_phantom(shape: Sequence[int] = (144, 128, 80), spacing: float = 0.625,
                seed: int = 0) -> Tuple[Volume, np.ndarray]:
    """(image Volume in LPS, uint8 left-atrium mask on its grid); deterministic for a given seed.

    Sizes are in millimetres of a 90 x 80 x 50 mm field of view around the
    atrium at the default shape, roughly what the LA benchmark crops cover.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    extent = np.asarray(shape, dtype=np.float32) * spacing
    axes = [(np.arange(n, dtype=np.float32) + 0.5) * spacing - e / 2 for n, e in zip(shape, extent)]
    x, y, z = np.meshgrid(*axes, indexing="ij")  # mm from the centre; x left, y posterior, z superior
    points = np.stack([x, y, z], axis=-1)
    scale = float(min(extent[0] / 90.0, extent[1] / 80.0, extent[2] / 50.0))

    wobble = _smooth_field(rng, shape, sigma_voxels=6.0 / spacing)  # shared shape irregularity

    def ellipsoid(centre, radii, roughness=0.0):
        c = np.asarray(centre, dtype=np.float32) * scale
        r = np.asarray(radii, dtype=np.float32) * scale
        d = (((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2)
        return d <= 1.0 + roughness * wobble

    # A crop around the heart, as the LA benchmark's are: tissue almost everywhere, lungs at the sides.
    lungs = ellipsoid((-46, 4, 0), (12, 34, 60), 0.2) | ellipsoid((47, 6, 0), (11, 32, 60), 0.2)
    spine = ellipsoid((6, 36, 0), (9, 7, 80))
    descending_aorta = ellipsoid((-14, 30, 0), (6.5, 6.5, 80))
    myocardium = ellipsoid((-10, -30, -8), (24, 14, 20), 0.05)
    lv_blood = ellipsoid((-10, -32, -8), (15, 9, 13), 0.08)
    atrium = ellipsoid((2, 6, 2), (27, 15, 14), 0.22)  # wide left-right, flat top-bottom
    veins = np.zeros(shape, dtype=bool)
    for dx, dz in ((-1, 1), (-1, -1), (1, 1), (1, -1)):  # four pulmonary veins, two to each lung
        start = np.array([2 + dx * 20, 10, 2 + dz * 5], dtype=np.float32) * scale
        end = np.array([2 + dx * 40, 20, 2 + dz * 11], dtype=np.float32) * scale
        veins |= _tube(points, start, end, 3.5 * scale)

    texture = _smooth_field(rng, shape, sigma_voxels=1.5 / spacing)
    streaks = _smooth_field(rng, shape, sigma_voxels=(0.8 / spacing) * np.array([6.0, 1.0, 1.0]))
    image = 120.0 + 22.0 * texture + 10.0 * streaks  # mediastinal soft tissue, fat and vessels
    image[lungs] = 35.0 + 8.0 * texture[lungs]
    image[spine] = 150.0 + 12.0 * texture[spine]
    image[myocardium] = 75.0 + 8.0 * texture[myocardium]
    blood = lv_blood | descending_aorta | atrium | veins
    image[blood] = 210.0 + 14.0 * texture[blood]
    atrium_wall = ellipsoid((2, 6, 2), (29, 17, 16), 0.22) & ~atrium & ~veins & ~myocardium
    image[atrium_wall] = 95.0 + 8.0 * texture[atrium_wall]  # thin darker wall around the pool

    bias = np.exp(0.18 * _smooth_field(rng, shape, sigma_voxels=25.0 / spacing))
    image *= bias
    noise = 9.0
    real = image + rng.normal(0.0, noise, size=shape)
    imaginary = rng.normal(0.0, noise, size=shape)
    image = np.sqrt(real ** 2 + imaginary ** 2).astype(np.float32)  # magnitude image: Rician noise

    label = atrium.astype(np.uint8)
    volume = Volume(image, spacing=(spacing, spacing, spacing),
                    origin=tuple(float(-e / 2 + spacing / 2) for e in extent), direction=np.eye(3))
    return volume, label

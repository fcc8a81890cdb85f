"""What inference needs to reproduce training, stored with the weights.

As nnU-Net keeps its plans and mirroring axes beside each checkpoint, every
checkpoint this project writes carries an ``inference`` dict: sliding-window
size, voxel size, intensity normalisation, the axes the training augmentation
flipped (test-time flips may use only those), the probability threshold and
the post-processing chosen on the validation cases (keeping the largest
connected component, as nnU-Net decides its post-processing from validation).
The catalog, the CLI and the Slicer module read these from the weights; they
do not keep copies. Torch-free, so the CLI can describe a model cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

#: The normalisation this project trains with (``preprocess.normalize_intensity``).
PERCENTILE = "percentile"
#: Z-score over the whole image: what this project's v1 models saw.
ZSCORE = "zscore"
#: Intensities as stored: what the official CAML code trains and evaluates on (the LA ``.h5``
#: crops, each scan z-scored before it was cropped); official state_dicts are run so.
NONE = "none"
NORMALIZATIONS = (PERCENTILE, ZSCORE, NONE)
#: Axes of ``[i, j, k]`` that the training augmentation (``data.random_rot_flip``) reflects:
#: rot90 and flips in the (i, j) plane only; the slice axis k is never flipped.
AUGMENTATION_FLIP_AXES = (0, 1)
#: The official CAML patch / window size.
OFFICIAL_WINDOW = (112, 112, 80)
#: Named ways to run a model (``predictor.InferenceOptions.for_protocol``; ``caml segment
#: --protocol``; the panel's quality): the card's setting, a quick preview, the paper's evaluation.
PROTOCOLS = ("default", "fast", "official")
#: The default protocol's window overlap per image axis (``predictor.InferenceOptions``).
#: Measured with the bundled model on the 16 validation cases (``benchmarks/bench_roi_crop.py``,
#: flips on, plain averaging): a central 80 % crop keeps the whole image's mask at Dice 0.952
#: with 50 % overlap, 0.969 with 75 % and 0.971 with 7/8 along the slice axis. LA scans are
#: barely longer than a window along that axis (44 model voxels against 32), which would get
#: only 2-3 window positions at 75 %; the finer step costs little there because the axis is
#: short, where 7/8 in-plane too would nearly double the time for 0.002 more.
DEFAULT_OVERLAP = (0.75, 0.75, 0.875)
#: The fast preview's: the fewest windows that cover the image with a margin.
FAST_OVERLAP = 0.25


@dataclass(frozen=True)
class InferenceSettings:
    """How a model must be run, stored with its weights (``predictor.InferenceOptions`` is what
    one run chooses on top: protocol, overlap, flips, device batch).

    ``window`` (voxels), ``spacing`` (mm, None = each image's own),
    ``normalization``, ``flip_axes`` usable for test-time augmentation, ``threshold``, and
    ``largest_component``: keep only the largest connected component (on when it raised the
    validation Dice of the checkpoint)."""

    window: Tuple[int, int, int] = OFFICIAL_WINDOW
    spacing: Optional[Tuple[float, float, float]] = None
    normalization: str = PERCENTILE
    flip_axes: Tuple[int, ...] = AUGMENTATION_FLIP_AXES
    threshold: float = 0.5
    largest_component: bool = False

    def __post_init__(self) -> None:
        if len(self.window) != 3 or min(self.window) < 1:
            raise ValueError(f"window must be three positive sizes, got {self.window!r}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise ValueError(f"spacing must be three positive sizes in mm, got {self.spacing!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown intensity normalisation {self.normalization!r}; "
                             f"known: {', '.join(NORMALIZATIONS)}")
        if any(a not in (0, 1, 2) for a in self.flip_axes):
            raise ValueError(f"flip axes must be among 0, 1, 2, got {self.flip_axes!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold!r}")

    def to_dict(self) -> Dict[str, Any]:
        return {"window": list(self.window), "spacing": None if self.spacing is None else list(self.spacing),
                "normalization": self.normalization, "flip_axes": list(self.flip_axes),
                "threshold": self.threshold, "largest_component": self.largest_component}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InferenceSettings:
        try:
            spacing = d.get("spacing")
            return cls(window=tuple(int(w) for w in d["window"]),  # type: ignore[arg-type]
                       spacing=None if spacing is None else tuple(float(s) for s in spacing),  # type: ignore[arg-type]
                       normalization=str(d["normalization"]),
                       flip_axes=tuple(int(a) for a in d.get("flip_axes", AUGMENTATION_FLIP_AXES)),
                       threshold=float(d.get("threshold", 0.5)),
                       largest_component=bool(d.get("largest_component", False)))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed inference settings {dict(d)!r} ({exc})") from exc

    @classmethod
    def from_preset(cls, preset: Any) -> InferenceSettings:
        """The settings a model trained with ``preset`` (a TrainingPreset) must be run with."""
        return cls(window=tuple(preset.patch_size), spacing=preset.spacing,
                   normalization=preset.normalization, flip_axes=AUGMENTATION_FLIP_AXES)

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any]) -> InferenceSettings:
        """The settings stored with a checkpoint's weights.

        Files written before settings were stored: a project checkpoint's
        ``preset`` gives window and spacing and, having no ``normalization``
        field, means the z-score it was trained with; a plain state_dict (the
        official ``iter_15000.pth``) means the official setting: the paper's
        window at the image's own voxel size, on the intensities as stored.
        """
        stored = ckpt.get("inference")
        if isinstance(stored, Mapping):
            return cls.from_dict(stored)
        preset = ckpt.get("preset")
        if isinstance(preset, Mapping):
            spacing = preset.get("spacing")
            return cls(window=tuple(int(w) for w in preset.get("patch_size") or OFFICIAL_WINDOW),  # type: ignore[arg-type]
                       spacing=None if not spacing else tuple(float(s) for s in spacing),  # type: ignore[arg-type]
                       normalization=str(preset.get("normalization", ZSCORE)))
        return cls(window=OFFICIAL_WINDOW, spacing=None, normalization=NONE)

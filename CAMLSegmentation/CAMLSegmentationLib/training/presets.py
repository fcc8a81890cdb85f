"""Training presets are data: a dataclass filled from ``presets/<name>.json``.

Defaults are the official CAML hyper-parameters; a JSON preset lists only
what it changes. A preset records the voxel spacing it trains at so that
inference resamples new images to the same voxel size.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..errors import CAMLError, MissingFileError
from ..model.settings import NORMALIZATIONS

PRESET_DIR = Path(__file__).resolve().parent / "presets"

# Consistency ramp-up length R (in units of ``rampup_interval`` iterations) used by
# the official code for 4 / 8 / 16 labeled LA cases.
OFFICIAL_RAMPUP = {4: 40.0, 8: 20.0, 16: 15.0}


#: Fields older checkpoints recorded that no longer mean anything (validation now runs the
#: same predictor as ``caml segment``; ``extra`` was never read).
RETIRED_FIELDS = ("val_overlap", "extra")
class PresetError(CAMLError, ValueError):
    """A preset that is not valid JSON, names unknown fields or gives a field a value of the wrong type."""


@dataclass(frozen=True)
class TrainingPreset:
    name: str = "custom"
    description: str = ""
    spacing: Optional[Tuple[float, float, float]] = (0.625, 0.625, 0.625)
    patch_size: Tuple[int, int, int] = (112, 112, 80)
    # network
    base_filters: int = 16
    feat_dim: int = 32
    dropout: float = 0.5
    cma: bool = True
    # optimisation
    iterations: int = 15000
    labeled_batch: int = 2
    unlabeled_batch: int = 2
    lr: float = 0.01
    lr_schedule: str = "constant"  # "constant" (paper) or "poly" (lr * (1 - t/T)^0.9)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # loss: lambda_s * sum of Dice + lambda_c(t) * consistency + lambda_o(t) * OCC
    lambda_s: float = 0.5
    lambda_c: float = 1.0
    lambda_o: float = 0.05
    sharpen_temperature: float = 0.1
    rampup_interval: int = 150  # t = iteration // rampup_interval
    rampup_length: Optional[float] = None  # R; None = official value for the number of labeled cases
    # OCC
    memory_per_class: int = 256
    num_filtered: int = 12800
    occ_temperature: float = 0.1
    occ_heads_on: str = "agreeing"  # "agreeing" (official: every V/A-agreeing unlabeled voxel) or "selected"
    # bookkeeping
    validate: bool = True  # false: no validation (and no best.pt) even when validation cases are given
    val_interval: int = 200
    val_start: int = 800
    checkpoint_interval: int = 200
    amp: bool = True  # mixed precision, used only on CUDA
    # intensities (see preprocess.normalize_intensity and data.random_intensity)
    normalization: str = "percentile"
    intensity_probability: float = 0.0  # chance that a training crop gets the intensity augmentation
    intensity_scale: Tuple[float, float] = (1.0, 1.0)  # multiplicative factor, drawn log-uniformly
    intensity_shift: float = 0.0  # added offset, uniform in [-shift, shift] (normalised units)
    intensity_gamma: Tuple[float, float] = (1.0, 1.0)  # contrast curve exponent, drawn log-uniformly
    intensity_noise: float = 0.0  # Gaussian noise, standard deviation uniform in [0, noise]
    # field of view (see data.random_crop): a training crop may reach past the image's border by
    # this fraction of the patch on each side, the outside being background (0 after
    # normalisation, label 0), so the atrium is seen anywhere in a patch and next to an edge.
    crop_margin: float = 0.0
    # ROI augmentation (see data.random_roi): this share of training cases is first cut to a
    # random box keeping at least roi_min_fraction of each axis, so the model sees the atrium
    # cut by an image border, as after a user's ROI crop.
    roi_probability: float = 0.0
    roi_min_fraction: float = 0.6
    # shift consistency (see losses.shift_consistency_loss): the unlabeled images come as pairs
    # of crops of one image offset by up to shift_max of the patch per axis, and
    # shift_consistency * ramp weighs the squared difference of their predictions where they
    # overlap; 0 = off (the official method).
    shift_consistency: float = 0.0
    shift_max: float = 0.25

    def rampup_for(self, num_labeled: int) -> float:
        """R for this many labeled cases: the preset's value, else the official table (nearest entry)."""
        if self.rampup_length is not None:
            return float(self.rampup_length)
        nearest = min(OFFICIAL_RAMPUP, key=lambda n: abs(n - num_labeled))
        return OFFICIAL_RAMPUP[nearest]

    def with_overrides(self, **changes: Any) -> TrainingPreset:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["spacing"] = list(self.spacing) if self.spacing is not None else None
        d["patch_size"] = list(self.patch_size)
        d["intensity_scale"] = list(self.intensity_scale)
        d["intensity_gamma"] = list(self.intensity_gamma)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> TrainingPreset:
        if not isinstance(d, dict):
            raise PresetError(f"a preset is a JSON object of fields, not {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k not in RETIRED_FIELDS}
        unknown = sorted(set(d) - names)
        if unknown:
            raise PresetError(f"unknown preset field(s): {', '.join(unknown)}")
        d = _checked_types(d)
        if d.get("spacing") is not None:
            d["spacing"] = tuple(float(s) for s in d["spacing"])
        if "patch_size" in d:
            d["patch_size"] = tuple(int(s) for s in d["patch_size"])
        for name in ("intensity_scale", "intensity_gamma"):
            if name in d:
                d[name] = tuple(float(v) for v in d[name])
        preset = cls(**d)
        if any(s % 16 for s in preset.patch_size):
            raise PresetError(f"patch size {preset.patch_size}: each side must be a multiple of 16 "
                             "(four 2x downsamplings)")
        if preset.lr_schedule not in ("constant", "poly"):
            raise PresetError(f"lr_schedule must be 'constant' or 'poly', not {preset.lr_schedule!r}")
        if preset.normalization not in NORMALIZATIONS:
            raise PresetError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, not "
                             f"{preset.normalization!r}")
        for name in ("intensity_scale", "intensity_gamma"):
            lo, hi = getattr(preset, name)
            if not 0 < lo <= hi:
                raise PresetError(f"{name} must be [low, high] with 0 < low <= high, got [{lo}, {hi}]")
        if not 0.0 <= preset.crop_margin < 1.0:
            raise PresetError(f"crop_margin must be in [0, 1) (a fraction of the patch), got {preset.crop_margin}")
        if not 0.0 <= preset.roi_probability <= 1.0:
            raise PresetError(f"roi_probability must be in [0, 1], got {preset.roi_probability}")
        if not 0.0 < preset.roi_min_fraction <= 1.0:
            raise PresetError(f"roi_min_fraction must be in (0, 1] (a fraction of each axis), "
                             f"got {preset.roi_min_fraction}")
        if preset.shift_consistency < 0:
            raise PresetError(f"shift_consistency must be >= 0, got {preset.shift_consistency}")
        if not 0.0 <= preset.shift_max < 1.0:
            raise PresetError(f"shift_max must be in [0, 1) (a fraction of the patch), got {preset.shift_max}")
        if preset.shift_consistency > 0 and preset.unlabeled_batch % 2:
            raise PresetError("shift_consistency pairs the unlabeled crops: unlabeled_batch must be even, "
                             f"got {preset.unlabeled_batch}")
        if preset.occ_heads_on not in ("agreeing", "selected"):
            raise PresetError(f"occ_heads_on must be 'agreeing' or 'selected', not {preset.occ_heads_on!r}")
        return preset


#: Fields that must be at least 1 (counts and intervals) or strictly positive (rates, sizes).
_AT_LEAST_ONE = ("iterations", "labeled_batch", "base_filters", "feat_dim", "rampup_interval",
                 "memory_per_class", "num_filtered", "val_interval", "checkpoint_interval")


def _checked_types(d: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of ``d`` where every value has the type of its field's default, else ``PresetError``.

    A wrong type ("iterations": "many") would otherwise surface only deep
    inside training, after the output folder was created.
    """
    if not isinstance(d, dict):
        raise PresetError(f"a preset is a JSON object of fields, not {type(d).__name__}")
    defaults = {f.name: f.default for f in fields(TrainingPreset)}
    out = dict(d)
    for key, value in d.items():
        default = defaults.get(key)
        if value is None and (default is None or key == "spacing"):
            continue  # optional fields
        if isinstance(default, bool):
            ok = isinstance(value, bool)
            want = "true or false"
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
            want = "a whole number"
        elif isinstance(default, float) or default is None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            want = "a number"
            if ok:
                out[key] = float(value)
        elif isinstance(default, str):
            ok, want = isinstance(value, str), "a string"
        elif isinstance(default, tuple):
            ok = (isinstance(value, (list, tuple)) and len(value) == len(default)
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                          for v in value))
            want = f"a list of {len(default)} positive numbers"
        else:
            continue  # free-form fields keep whatever JSON gives them
        if not ok:
            raise PresetError(f"preset field {key!r} must be {want}, not {json.dumps(value)}")
        if key in _AT_LEAST_ONE and value < 1:
            raise PresetError(f"preset field {key!r} must be at least 1, not {value}")
        if key in ("unlabeled_batch", "val_start") and value < 0:
            raise PresetError(f"preset field {key!r} must not be negative, not {value}")
        if key == "lr" and value <= 0:
            raise PresetError(f"preset field 'lr' must be positive, not {value}")
    return out


#: Bundled presets that were renamed: the old name (a cohort's settings or a script may hold it)
#: loads the same preset under its new name. ``paper`` was never the paper's setting (it
#: normalises and augments intensities as this project does); ``official`` is.
RENAMED_PRESETS = {"paper": "full"}


def available_presets() -> List[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name_or_path: Union[str, Path]) -> TrainingPreset:
    """A bundled preset by name (``official``, ``full``, ``cpu``, ``al-finetune``) or a JSON file of the same form."""
    path = Path(name_or_path)
    if not path.suffix == ".json":
        name = RENAMED_PRESETS.get(str(name_or_path), str(name_or_path))
        path = PRESET_DIR / f"{name}.json"
        if not path.is_file():
            raise PresetError(f"unknown preset {name_or_path!r}; available: {', '.join(available_presets())} "
                             "or a path to a .json preset")
    elif not path.is_file():
        raise MissingFileError(f"{path}: no such preset file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PresetError(f"{path}: not valid JSON ({exc})") from exc
    return TrainingPreset.from_dict(data)

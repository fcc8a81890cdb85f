"""``python -m CAMLSegmentationLib.demo [IMAGE]`` (what ``make demo`` runs): segment one image end to end.

With no IMAGE, a synthetic MRI-like volume (a bright blob in noise, on an
oblique grid) is generated so the demo runs on a fresh machine. The catalog's
default model is used; while the catalog is empty, a randomly initialised
network stands in, clearly labelled, so every step of the pipeline still runs
(the mask is then meaningless). Outputs go to ``./demo-output/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

OUT_DIR = Path("demo-output")


def synthetic_image(path: Path, shape: Sequence[int] = (112, 96, 64), seed: int = 0) -> Path:
    """Write a noisy volume with one bright ellipsoid, 0.625 mm voxels, axes rotated 20 degrees about z."""
    from .volume import Volume, write_image

    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    centre, radii = [0.5 * n for n in shape], [0.22 * n for n in shape]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
    image = 100.0 + 80.0 * inside + rng.normal(0.0, 20.0, size=tuple(shape))
    a = np.deg2rad(20.0)
    direction = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    volume = Volume(image.astype(np.float32), spacing=(0.625, 0.625, 0.625), origin=(-30.0, -25.0, 10.0),
                    direction=direction)
    return write_image(volume.array, volume, path)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m CAMLSegmentationLib.demo", description=__doc__.split("\n")[0])
    parser.add_argument("image", nargs="?", help="an MRI to segment (default: a generated synthetic one)")
    parser.add_argument("--out", default=str(OUT_DIR), help="output folder (default ./demo-output)")
    args = parser.parse_args(argv)

    from . import cli
    from .catalog import bundled_catalog_path, default_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = []
    if args.image:
        image = Path(args.image)
        steps.append(f"input: {image}")
    else:
        image = synthetic_image(out / "synthetic_mri.nrrd")
        steps.append(f"no image given: generated a synthetic MRI-like volume (bright blob in noise, "
                     f"112x96x64 voxels of 0.625 mm, oblique axes) -> {image}")

    model_args: List[str] = []
    entry = default_model()
    if entry is not None:
        model_args = ["--model", entry.id]
        steps.append(f"model: {entry.id} version {entry.version} from the catalog")
    else:
        import torch

        from .checkpoint import save_checkpoint
        from .network import CAMLNet, NetworkConfig

        torch.manual_seed(0)
        weights = out / "untrained_random_weights.pt"
        net = CAMLNet(NetworkConfig())
        save_checkpoint(weights, {"network": net.config.to_dict(), "model": net.state_dict(),
                                  "note": "randomly initialised, untrained: for the demo only"})
        model_args = ["--weights", str(weights)]
        steps.append(f"model: the catalog ({bundled_catalog_path()}) has no trained model yet, so a "
                     f"RANDOMLY INITIALISED, UNTRAINED full-size network stands in ({weights}); the pipeline "
                     f"runs end to end but the mask means nothing")

    mask = out / (image.name.split(".")[0] + "_left_atrium.seg.nrrd")
    uncertainty = out / (image.name.split(".")[0] + "_uncertainty.nrrd")
    print("CAML demo\n  " + "\n  ".join(steps), flush=True)
    code = cli.main(["segment", str(image), str(mask), *model_args, "--uncertainty", str(uncertainty), "--lcc"])
    if code != 0:
        return code
    print("\nDone. Outputs:\n"
          f"  {mask}: Slicer segmentation (segment 'Left atrium') on the input's grid; open it in 3D Slicer\n"
          f"  {uncertainty}: per-voxel disagreement |p_V - p_A| of CAML's two sub-models (0 = agree)\n"
          f"Segment your own image: caml segment IMAGE [OUT.seg.nrrd]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the LA benchmarks share: ``caml segment``'s model and inference options, the last N cases of
``train.list``, one torch thread. Each benchmark adds its own arguments through ``extra``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "CAMLSegmentation"))
LA_ROOT = REPO.parent / "shared" / "data" / "LA"


def la_case_path(case: str) -> Path:
    return LA_ROOT / "2018LA_Seg_Training Set" / case / "mri_norm2.h5"


def setup(doc: str, extra: Optional[Callable[[argparse.ArgumentParser], None]] = None
          ) -> Tuple[argparse.Namespace, Any, Any, List[str]]:
    """Parse the command line; return (args, model, inference options, case ids)."""
    from CAMLSegmentationLib.cli.common import (
        add_inference_arguments,
        add_model_arguments,
        load_model_from_args,
        options_from_args,
    )

    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--cases", type=int, default=16, help="the last N cases of train.list (default 16)")
    if extra is not None:
        extra(parser)
    add_inference_arguments(parser)
    args = parser.parse_args()
    if not (LA_ROOT / "train.list").is_file():
        raise SystemExit(f"needs the LA data in {LA_ROOT}")

    import torch

    torch.set_num_threads(1)
    model = load_model_from_args(args, with_a=args.ensemble)
    ids = (LA_ROOT / "train.list").read_text().split()[-args.cases:]
    return args, model, options_from_args(args), ids

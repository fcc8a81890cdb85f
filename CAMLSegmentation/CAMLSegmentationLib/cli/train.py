"""``caml train``: semi-supervised CAML training from the command line (also under torchrun)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import add_progress_argument


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a CAML model (labeled + unlabeled cases)",
        description="Train CAML semi-supervised: the labeled cases give the supervised Dice loss, every "
                    "other case of the data folder is unlabeled data. Writes OUT/last.pt (resumable, "
                    "updated every checkpoint interval, and when stopped unless under torchrun), "
                    "OUT/best.pt (best validation Dice), OUT/train.log and OUT/config.json. Run several GPUs with "
                    "'torchrun --nproc_per_node N -m CAMLSegmentationLib.cli train ...'.")
    p.add_argument("--preset", default="cpu",
                   help="'official' (trains as the official CAML code: stored intensities, fp32; GPU), "
                        "'full' (the official network and schedule with this project's intensity "
                        "normalisation and augmentation; GPU; formerly 'paper'), 'cpu' (2-core CPU in < 2 h) "
                        "or a preset .json (default: cpu)")
    p.add_argument("--data", required=True, type=Path, metavar="ROOT",
                   help="data folder: the LA layout (train.list + '2018LA_Seg_Training Set/<id>/"
                        "mri_norm2.h5') or a folder of images/ and labels/ files")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--labeled", type=int, metavar="N", help="label the first N cases of the data order")
    group.add_argument("--labeled-list", type=Path, metavar="FILE", help="file of labeled case ids, one per line")
    p.add_argument("--unlabeled-list", type=Path, metavar="FILE",
                   help="file of case ids whose images form the unlabeled stream (default: every case that "
                        "is not labeled, validation cases included); may name labeled cases, which is how "
                        "CAML keeps an unlabeled stream when every training case is labeled; validation "
                        "cases may not be in it")
    p.add_argument("--holdout-list", type=Path, metavar="FILE",
                   help="labeled case ids kept out of everything: no stream sees them and they choose "
                        "neither the checkpoint nor the post-processing; `caml evaluate --weights "
                        "OUT/best.pt` without --list scores them")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-list", type=Path, metavar="FILE",
                     help="validation case ids (their labels are used only to pick best.pt); default: none")
    val.add_argument("--val-last", type=int, metavar="N",
                     help="validate on the last N labeled cases of the data order (e.g. 8 on LA)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--init-weights", type=Path, metavar="FILE",
                   help="warm start: begin from these model weights (a checkpoint or release of the same "
                        "network); optimizer and iteration count start anew")
    p.add_argument("--iterations", type=int, metavar="N", help="override the preset's number of iterations")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:K")
    p.add_argument("--seed", type=int, default=1337, help="random seed (default 1337, as the official code)")
    p.add_argument("--supervised-only", action="store_true",
                   help="baseline: train on the labeled cases alone with the Dice loss (no unlabeled data)")
    add_progress_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..progress import commit_job, emit_final
    from ..training.presets import load_preset
    from ..training.trainer import TrainConfig, train
    from .common import progress_callback

    preset = load_preset(args.preset)
    if args.iterations is not None:
        if args.iterations < 1:
            raise UserError("--iterations must be at least 1")
        preset = preset.with_overrides(iterations=args.iterations)
    if args.labeled is not None and args.labeled < 1:
        raise UserError("--labeled must be at least 1")
    progress = progress_callback(args.progress)
    cfg = TrainConfig(data_root=args.data, out_dir=args.out, preset=preset, labeled=args.labeled,
                      labeled_list=args.labeled_list, val_list=args.val_list, val_last=args.val_last,
                      device=args.device,
                      seed=args.seed, resume=args.resume, supervised_only=args.supervised_only,
                      init_weights=args.init_weights, unlabeled_list=args.unlabeled_list,
                      holdout_list=args.holdout_list)
    # A cancel (SIGTERM from a parent, Ctrl-C) stops at an iteration boundary and writes a
    # resumable last.pt first; `caml` installed the handler before any work.
    result = train(cfg, progress=progress)
    commit_job()  # trained to the end: a late signal changes nothing
    summary = (f"trained {result.iterations} iterations in {result.seconds:.0f} s; "
               f"checkpoints in {result.out_dir}")
    if result.best_dice is not None:
        summary += f"; best validation Dice {result.best_dice:.4f} at iteration {result.best_iteration}"
    if args.progress == "json":
        # best.pt exists only when a validation ran: name only files that are there.
        outputs = {name: str(result.out_dir / f"{name}.pt") for name in ("last", "best")
                   if (result.out_dir / f"{name}.pt").is_file()}
        emit_final({"event": "done", "outputs": outputs, "best_dice": result.best_dice,
                    "best_iteration": result.best_iteration, "iterations": result.iterations})
    else:
        print(summary, file=sys.stderr)
    return 0

"""``caml evaluate``: score a model on labeled LA cases, per case and mean +- std, like the paper's table.

Distances are reported in voxels (the paper's protocol, medpy without a
spacing) and in mm. With ``--protocol official`` the inference is the
paper's own (strides 18/18/4, averaged softmax, argmax, no post-processing),
so the numbers compare with published ones.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import MissingFileError
from .common import add_inference_arguments, add_model_arguments, json_outcome

COLUMNS = [("dice", "Dice(%)", 100.0), ("jaccard", "Jaccard(%)", 100.0), ("hd95_voxels", "95HD(vox)", 1.0),
           ("asd_voxels", "ASD(vox)", 1.0), ("hd95_mm", "95HD(mm)", 1.0), ("asd_mm", "ASD(mm)", 1.0)]


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate", help="Dice, Jaccard, 95HD and ASD of a model on labeled cases",
        description="Segment every case of --list under --data and compare with its label.")
    p.add_argument("--data", required=True, metavar="ROOT",
                   help="data folder in any layout `caml train` reads: LA (train.list + '2018LA_Seg_Training "
                        "Set/<id>/mri_norm2.h5'), images/ + labels/, or nnU-Net imagesTr/ + labelsTr/")
    p.add_argument("--list", metavar="FILE",
                   help="ids of the cases to score, one per line (each needs a label); default: the "
                        "held-out cases the weights' training recorded (`caml train --holdout-list`)")
    p.add_argument("--out", default="caml-evaluation", metavar="DIR",
                   help="folder for metrics.csv and metrics.json (default ./caml-evaluation)")
    add_model_arguments(p)
    add_inference_arguments(p)
    from .backend import add_backend_argument

    add_backend_argument(p)
    p.set_defaults(func=run)


def _fmt(value: float, scale: float) -> str:
    return "-" if not math.isfinite(value) else f"{value * scale:.2f}"


def format_table(rows: List[Dict[str, Any]], summary: Dict[str, Dict[str, float]]) -> str:
    """Per-case lines, then ``mean +- std`` per column (NaN distances, from empty masks, are skipped)."""
    width = max([len("case")] + [len(r["case"]) for r in rows])
    head = f"{'case':<{width}}  " + "  ".join(f"{title:>13}" for _, title, _ in COLUMNS) + f"  {'time(s)':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['case']:<{width}}  " + "  ".join(f"{_fmt(r[k], s):>13}" for k, _, s in COLUMNS)
                     + f"  {r['seconds']:>8.1f}")
    lines.append("-" * len(head))
    cells = []
    for key, _, scale in COLUMNS:
        m, sd = summary[key]["mean"], summary[key]["std"]
        cells.append(f"{_fmt(m, scale)}±{_fmt(sd, scale)}" if math.isfinite(m) else "-")
    lines.append(f"{'mean±std':<{width}}  " + "  ".join(f"{c:>13}" for c in cells))
    undefined = [key for key, _, _ in COLUMNS if summary[key]["n"] < len(rows)]
    if undefined:
        lines.append(f"({', '.join(undefined)}: undefined for cases where exactly one mask is empty; "
                     f"means over the others)")
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    from ..inference.metrics import METRIC_NAMES, evaluate_case, summarize
    from ..inference.predictor import segment_volume
    from ..io.files import atomic_outputs
    from ..io.volume import check_output_paths, validate_volume
    from ..progress import ProgressEvent
    from ..training.sources import DataError, open_source, read_id_list
    from .backend import load_segment_model
    from .common import options_from_args, progress_callback

    json_mode = args.progress == "json"
    with json_outcome(json_mode) as final:
        root = Path(args.data)
        if not root.is_dir():
            raise MissingFileError(f"{root}: no such data folder")
        source = open_source(root)  # the layouts `caml train` reads, found the same way
        ids = read_id_list(Path(args.list)) if args.list else recorded_holdout(args)
        list_name = args.list or "the held-out cases recorded in the weights"
        known = set(source.case_ids())
        unknown = [cid for cid in ids if cid not in known]
        if unknown:  # every case found before any work
            raise DataError(f"{list_name}: case id(s) not in {root}: {', '.join(unknown[:5])}")
        unlabeled = [cid for cid in ids if not source.has_label(cid)]
        if unlabeled:
            raise DataError(f"{list_name}: case(s) without a label, cannot evaluate: {', '.join(unlabeled[:5])}")
        out_dir = Path(args.out)
        check_output_paths([("metrics", "table", out_dir / "metrics.json"),
                            ("table", "table", out_dir / "metrics.csv")])
        options = options_from_args(args)
        model = load_segment_model(args, with_a=options.ensemble)  # the backend `caml segment` would use
        progress = progress_callback(args.progress)
        rows: List[Dict[str, Any]] = []
        results = []
        for n, cid in enumerate(ids):
            # As stored, on its own grid: the same voxels `caml segment` would be given.
            volume, label = source.read(cid, with_label=True)
            validate_volume(volume, source.describe(cid))
            start = time.perf_counter()
            result = segment_volume(volume, model, options, progress=progress)
            seconds = time.perf_counter() - start
            metrics = evaluate_case(result.mask, label, volume.spacing)
            results.append(metrics)
            rows.append(dict({"case": cid, "seconds": round(seconds, 3)}, **metrics.to_dict()))
            progress(ProgressEvent("cases", n + 1, len(ids), cid, {"dice": metrics.dice}))
        summary = summarize(results)
        report = {"model": model.name, "protocol": options.protocol, "data": str(root), "list": list_name,
                  "window": list(model.window), "device": str(model.device), "backend": model.backend,
                  "precision": model.precision,
                  "cases": rows, "summary": summary}
        with atomic_outputs([out_dir / "metrics.json", out_dir / "metrics.csv"],
                            commit=True) as (tmp_json, tmp_csv):
            tmp_json.write_text(json.dumps(_json_safe(report), indent=2) + "\n")
            _write_csv(tmp_csv, rows, summary, METRIC_NAMES)
        final.update(outputs={"csv": str(out_dir / "metrics.csv"), "json": str(out_dir / "metrics.json")},
                              summary=_json_safe(summary))
        if not json_mode:
            print(f"model {model.name}, protocol {options.protocol}, on {model.device}, {len(ids)} cases\n")
            print(format_table(rows, summary))
            print(f"\nwritten: {out_dir / 'metrics.csv'}, {out_dir / 'metrics.json'}")
    return 0


def recorded_holdout(args: argparse.Namespace) -> List[str]:
    """The held-out case ids the training of ``--weights`` (or the ``--model``) recorded; UserError if none."""
    from ..errors import UserError
    from ..model.catalog import default_model, find_model, verify
    from ..model.checkpoint import read_checkpoint

    if args.weights:
        path = Path(args.weights)
    else:
        entry = find_model(args.model) if args.model else default_model()
        if entry is None:
            raise UserError("no --list given and no model to read held-out cases from: pass --list FILE")
        path = verify(entry)
    ckpt = read_checkpoint(path)
    split = ckpt.get("split") or (ckpt.get("trained") or {}).get("split") or {}
    holdout = split.get("holdout") if isinstance(split, dict) else None
    if not holdout:
        raise UserError(f"{path}: its training recorded no held-out cases (`caml train --holdout-list`); "
                        "pass --list FILE")
    return [str(i) for i in holdout]


def _csv(value: Optional[float]) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"


def _write_csv(path: Path, rows: List[Dict[str, Any]], summary: Dict[str, Dict[str, float]],
               names: List[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", *names, "seconds"])
        for r in rows:
            writer.writerow([r["case"], *[_csv(r[k]) for k in names], r["seconds"]])
        for stat in ("mean", "std"):
            writer.writerow([stat, *[_csv(summary[k][stat]) for k in names], ""])

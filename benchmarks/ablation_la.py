"""What each recipe choice of the `cpu` preset buys on the 16 LA validation cases, per CPU hour.

Every row is its own `caml train` run (its own folder under ``--runs``, outside the
repository) with the data and streams of `caml-la-cpu64`: labeled = the first 64 cases
of train.list, the unlabeled stream = the same 64 images (``--unlabeled-list``),
``--val-last 16``, seed 64. Each row changes one thing against the baseline:

    start     caml-la-cpu8 v3 as it is: the point the warm-started rows start from (no training)
    a  base   the cpu preset, warm-started from caml-la-cpu8 v3, N iterations
    b  2x     as a, 2N iterations
    c  patch  96x96x48 patches instead of 64x64x32, warm-started, N iterations
    d  voxel  1.0 mm voxels instead of 1.25 mm (same 64x64x32 patch), warm-started, N iterations
    e  f8/f16 8 and 16 base filters, both from scratch (16-filter weights cannot start from an
              8-filter model), N iterations each: the pair compares like with like; and the
              pair again with 4N iterations each (last, the costliest rows)

Validation is switched off in the rows' presets (``validate: false``): N is below the
preset's ``val_start``, and the rows are scored once, on the final checkpoint
(``last.pt``), by ``caml evaluate`` on the LA ``.h5`` files with the largest connected
component kept (``--lcc``, what the validation of both bundled models chose), so every
row is post-processed alike. Training wall time includes reading the data (each `caml
train` start) and any iterations redone after an interruption; seconds per iteration is
the training loop's own time, from train.log's timestamps.

Resumable: each finished row is appended to ``--results`` (a CSV); a re-run skips the
rows there for the same N, continues an interrupted training exactly (``caml train
--resume``) and re-scores only a row without its evaluation. SIGTERM/Ctrl-C stop the
running `caml train` at an iteration boundary with a resumable last.pt.

    OMP_NUM_THREADS=1 python benchmarks/ablation_la.py --iterations 50        # run (resumes)
    python benchmarks/ablation_la.py --iterations 50 --report                 # the markdown table
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
LA_ROOT = REPO.parent / "shared" / "data" / "LA"
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "ablation_la" / "results.csv"
DEFAULT_RUNS = REPO.parent / "ablation-runs"
START_WEIGHTS = REPO / "Resources" / "Models" / "caml-la-cpu8@3.pt"
STAMP = "%Y-%m-%d %H:%M:%S"  # train.log's timestamps
#: The split of caml-la-cpu64 (see Resources/Models/README.md).
LABELED, VALIDATION, SEED = 64, 16, 64

#: Row key -> (title, preset fields changed from `cpu`, iterations as a multiple of N,
#: warm start from START_WEIGHTS). ``start`` trains nothing: it scores START_WEIGHTS.
ROWS: Dict[str, Dict[str, Any]] = {
    "start": dict(title="start: caml-la-cpu8 v3, no training", changes={}, times=0, warm=True),
    "base": dict(title="a. cpu preset, warm start", changes={}, times=1, warm=True),
    "iter2x": dict(title="b. 2x iterations, warm start", changes={}, times=2, warm=True),
    "voxel1mm": dict(title="d. 1.0 mm voxels, warm start", changes={"spacing": [1.0, 1.0, 1.0]}, times=1,
                     warm=True),
    "scratch-f8": dict(title="e. 8 filters, from scratch", changes={}, times=1, warm=False),
    "scratch-f16": dict(title="e. 16 filters, from scratch", changes={"base_filters": 16}, times=1,
                        warm=False),
    "patch96": dict(title="c. 96x96x48 patch, warm start", changes={"patch_size": [96, 96, 48]}, times=1,
                    warm=True),
    # N iterations from scratch is barely past the first steps; the pair again with 4N.
    "scratch-f8-4x": dict(title="e. 8 filters, from scratch, 4x iterations", changes={}, times=4, warm=False),
    "scratch-f16-4x": dict(title="e. 16 filters, from scratch, 4x iterations", changes={"base_filters": 16},
                           times=4, warm=False),
}
#: Cheapest informative rows first, the 16-filter pair together, the costly patch last.
ORDER = list(ROWS)

FIELDS = ["row", "title", "changes", "warm_start", "n", "iterations", "train_wall_s", "s_per_iteration",
          "dice_mean", "dice_min", "dice_min_case", "jaccard_mean", "jaccard_min", "hd95_vox_mean",
          "hd95_vox_max", "asd_vox_mean", "asd_vox_max", "infer_s_per_case", "finished_utc"]


def caml(*args: str) -> List[str]:
    return [sys.executable, "-m", "CAMLSegmentationLib.cli", *args]


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "CAMLSegmentation"), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


_child: Optional[subprocess.Popen] = None
_stopped_by: Optional[int] = None


def _forward(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    # caml train stops at an iteration boundary and writes last.pt on SIGTERM. The handler only
    # passes the signal on: it runs inside Popen.wait(), whose lock a second wait() here would
    # wait for forever; run_child sees the child end and stops the ablation.
    global _stopped_by
    _stopped_by = signum
    if _child is None:
        raise SystemExit(f"stopped by signal {signum}; re-run the same command to resume")
    _child.send_signal(signal.SIGTERM)


def run_child(cmd: List[str]) -> float:
    """Run ``cmd`` to the end; its wall seconds. SystemExit with a one-line reason if it fails."""
    global _child
    print("$ " + " ".join(cmd[2:]), flush=True)
    t = time.time()
    _child = subprocess.Popen(cmd, env=child_env(), cwd=REPO)
    rc = _child.wait()
    _child = None
    if _stopped_by is not None:
        raise SystemExit(f"stopped by signal {_stopped_by}; re-run the same command to resume")
    if rc != 0:
        raise SystemExit(f"command failed with exit status {rc}: {' '.join(cmd[2:])}")
    return time.time() - t


def read_results(path: Path) -> List[Dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_result(path: Path, row: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def loop_seconds(log: Path) -> Dict[str, float]:
    """Iterations trained and their seconds, summed over the `caml train` invocations in ``train.log``.

    Each invocation logs "... from iteration K" once its data is loaded, then "iteration X ..."
    lines; its loop time runs from that first line to its last iteration line (the log's
    timestamps, whole seconds), so reading the data is left out.
    """
    iterations = seconds = 0.0
    start = last = None

    def close() -> None:
        nonlocal iterations, seconds
        if start is not None and last is not None and last[1] > start[1]:
            iterations += last[1] - start[1]
            seconds += (last[0] - start[0]).total_seconds()

    if log.is_file():
        for line in log.read_text().splitlines():
            stamp = line[:19]
            m = re.search(r" from iteration (\d+)$", line)
            if m:
                close()
                start, last = (datetime.strptime(stamp, STAMP), int(m.group(1))), None
                continue
            m = re.match(r"\S+ \S+ iteration (\d+) loss", line)
            if m and start is not None:
                last = (datetime.strptime(stamp, STAMP), int(m.group(1)))
        close()
    return {"iterations": iterations, "seconds": seconds}


def train_row(key: str, spec: Dict[str, Any], n: int, runs: Path, data: Path, lists: Dict[str, Path]) -> Path:
    """Train (or resume) the row's run; returns its folder. Wall seconds accumulate in wall.json."""
    sys.path.insert(0, str(REPO / "CAMLSegmentation"))
    from CAMLSegmentationLib.training.presets import load_preset

    out = runs / f"{key}-n{n}"
    out.mkdir(parents=True, exist_ok=True)
    # A preset JSON: the shipped `cpu` preset with this row's change; no validation (scored afterwards).
    preset = load_preset("cpu").to_dict()
    preset.update(spec["changes"], name=f"cpu-ablation-{key}", validate=False, iterations=n * spec["times"])
    preset_path = out / "preset.json"
    preset_path.write_text(json.dumps(preset, indent=2) + "\n")
    wall_path = out / "wall.json"
    wall = json.loads(wall_path.read_text()) if wall_path.is_file() else {"seconds": 0.0, "starts": 0}
    cmd = caml("train", "--preset", str(preset_path), "--data", str(data), "--labeled-list", str(lists["labeled"]),
               "--unlabeled-list", str(lists["labeled"]), "--val-last", str(VALIDATION), "--seed", str(SEED),
               "--out", str(out), "--progress", "none")
    if (out / "last.pt").is_file():
        cmd.append("--resume")  # exact continuation; a finished run returns at once
    elif spec["warm"]:
        cmd += ["--init-weights", str(START_WEIGHTS)]
    t = time.time()
    try:
        run_child(cmd)
    finally:
        wall["seconds"] += time.time() - t
        wall["starts"] += 1
        wall_path.write_text(json.dumps(wall) + "\n")
    return out


def evaluate(weights: Path, out: Path, data: Path, lists: Dict[str, Path]) -> Dict[str, Any]:
    metrics = out / "metrics.json"
    if not metrics.is_file() or metrics.stat().st_mtime < weights.stat().st_mtime:
        run_child(caml("evaluate", "--data", str(data), "--list", str(lists["validation"]), "--weights",
                       str(weights), "--lcc", "--out", str(out), "--progress", "none"))
    return json.loads(metrics.read_text())


def result_row(key: str, spec: Dict[str, Any], n: int, run_dir: Optional[Path], report: Dict[str, Any]) -> Dict:
    cases = report["cases"]
    summary = report["summary"]

    def worst(metric: str, lowest: bool) -> Dict[str, Any]:
        valid = [c for c in cases if c[metric] is not None]
        return (min if lowest else max)(valid, key=lambda c: c[metric])

    row: Dict[str, Any] = {"row": key, "title": spec["title"], "changes": json.dumps(spec["changes"]),
                           "warm_start": spec["warm"], "n": n, "iterations": n * spec["times"]}
    if run_dir is not None:
        wall = json.loads((run_dir / "wall.json").read_text())
        loop = loop_seconds(run_dir / "train.log")
        row["train_wall_s"] = round(wall["seconds"], 1)
        row["s_per_iteration"] = round(loop["seconds"] / loop["iterations"], 3) if loop["iterations"] else ""
    low = worst("dice", True)
    row.update(dice_mean=round(100 * summary["dice"]["mean"], 2), dice_min=round(100 * low["dice"], 2),
               dice_min_case=low["case"], jaccard_mean=round(100 * summary["jaccard"]["mean"], 2),
               jaccard_min=round(100 * worst("jaccard", True)["jaccard"], 2),
               hd95_vox_mean=round(summary["hd95_voxels"]["mean"], 2),
               hd95_vox_max=round(worst("hd95_voxels", False)["hd95_voxels"], 2),
               asd_vox_mean=round(summary["asd_voxels"]["mean"], 2),
               asd_vox_max=round(worst("asd_voxels", False)["asd_voxels"], 2),
               infer_s_per_case=round(sum(c["seconds"] for c in cases) / len(cases), 2),
               finished_utc=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"))
    return row


def _seconds(value: str) -> str:
    return f"{float(value):.2f}" if value not in ("", None) else "-"


#: What each row is compared with, case by case: one change at a time.
COMPARED_WITH = {"base": "start", "iter2x": "base", "voxel1mm": "base", "patch96": "base",
                 "scratch-f16": "scratch-f8", "scratch-f16-4x": "scratch-f8-4x"}
SHORT = {"start": "start", "base": "a", "scratch-f8": "8 filters", "scratch-f8-4x": "8 filters"}


def eval_dir(runs: Path, key: str, n: int) -> Path:
    return runs / "start-eval" if ROWS[key]["times"] == 0 else runs / f"{key}-n{n}" / "eval"


def per_case_path(results: Path) -> Path:
    """Each row's Dice per case, beside the results CSV: the paired columns need no run folders."""
    return results.with_name("per_case_dice.csv")


def record_per_case(results: Path, key: str, n: int, report: Dict[str, Any]) -> None:
    """Replace the row's per-case Dice (a row recorded again does not count twice)."""
    path = per_case_path(results)
    kept = [r for r in read_results(path) if (r["row"], r["n"]) != (key, str(n))]
    kept += [{"row": key, "n": n, "case": c["case"], "dice": round(100.0 * c["dice"], 4)} for c in report["cases"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["row", "n", "case", "dice"])
        writer.writeheader()
        writer.writerows(kept)


def backfill_per_case(results: Path, runs: Path) -> None:
    """Record the per-case Dice of finished rows that lack them (rows finished by an earlier version)."""
    have = {(r["row"], r["n"]) for r in read_results(per_case_path(results))}
    for r in read_results(results):
        metrics = eval_dir(runs, r["row"], int(r["n"])) / "metrics.json"
        if (r["row"], r["n"]) not in have and metrics.is_file():
            record_per_case(results, r["row"], int(r["n"]), json.loads(metrics.read_text()))


def case_dice(results: Path, key: str, n: int) -> Optional[Dict[str, float]]:
    found = {r["case"]: float(r["dice"]) for r in read_results(per_case_path(results))
             if r["row"] == key and int(r["n"]) == n}
    return found or None


def paired(results: Path, key: str, n: int) -> str:
    """Mean per-case Dice difference against COMPARED_WITH[key] +- its standard error, and cases better."""
    ref = COMPARED_WITH.get(key)
    mine, theirs = case_dice(results, key, n), case_dice(results, ref, n) if ref else None
    if not mine or not theirs or set(mine) != set(theirs):
        return "-"
    diff = [mine[c] - theirs[c] for c in sorted(mine)]
    mean = sum(diff) / len(diff)
    se = (sum((d - mean) ** 2 for d in diff) / (len(diff) - 1) / len(diff)) ** 0.5 if len(diff) > 1 else 0.0
    better = sum(d > 0 for d in diff)
    return f"{mean:+.2f} ± {se:.2f} vs {SHORT[ref]}, {better}/{len(diff)} cases better"


def report_table(results_csv: Path, n: int) -> str:
    """Markdown: one line per finished row of this N, in ORDER."""
    done = {r["row"]: r for r in read_results(results_csv) if int(r["n"]) == n}
    # Per CPU hour: Dice points gained over the start weights per hour of training wall time
    # (the from-scratch rows have no such start; their gain is over nothing and is left out).
    start = float(done["start"]["dice_mean"]) if "start" in done else None
    lines = ["| row | iterations | training wall (min) | s/iteration | Dice (lowest case) | Dice gain per hour | "
             "paired Dice difference | Jaccard (lowest) | 95HD vox (worst) | ASD vox (worst) | inference s/case |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in ORDER:
        r = done.get(key)
        if r is None:
            lines.append(f"| {ROWS[key]['title']} | not run yet | | | | | | | | | |")
            continue
        wall = f"{float(r['train_wall_s']) / 60:.1f}" if r["train_wall_s"] else "-"
        gain = "-"
        if start is not None and r["train_wall_s"] and r["warm_start"] == "True":
            gain = f"{(float(r['dice_mean']) - start) / (float(r['train_wall_s']) / 3600):+.2f}"
        lines.append(f"| {r['title']} | {r['iterations']} | {wall} | {_seconds(r['s_per_iteration'])} | "
                     f"{r['dice_mean']} ({r['dice_min']}) | {gain} | {paired(results_csv, key, n)} | "
                     f"{r['jaccard_mean']} ({r['jaccard_min']}) | "
                     f"{r['hd95_vox_mean']} ({r['hd95_vox_max']}) | {r['asd_vox_mean']} ({r['asd_vox_max']}) | "
                     f"{r['infer_s_per_case']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=50, metavar="N",
                        help="N, the iterations of a row (b trains 2N; default 50)")
    parser.add_argument("--rows", nargs="+", choices=ORDER, default=ORDER, help="the rows to run (default: all)")
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS,
                        help=f"scratch folder for the run folders, outside the repository (default {DEFAULT_RUNS})")
    parser.add_argument("--data", type=Path, default=LA_ROOT, help=f"the LA data folder (default {LA_ROOT})")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="the results CSV (appended)")
    parser.add_argument("--report", action="store_true", help="print the markdown table of the finished rows")
    args = parser.parse_args()
    if args.iterations < 1:
        raise SystemExit("--iterations must be at least 1")
    if args.report:
        print(report_table(args.results, args.iterations))
        return 0
    train_list = args.data / "train.list"
    if not train_list.is_file():
        raise SystemExit(f"needs the LA data: no {train_list}")
    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    ids = train_list.read_text().split()
    args.runs.mkdir(parents=True, exist_ok=True)
    lists = {"labeled": args.runs / f"labeled{LABELED}.list", "validation": args.runs / f"val{VALIDATION}.list"}
    lists["labeled"].write_text("\n".join(ids[:LABELED]) + "\n")
    lists["validation"].write_text("\n".join(ids[-VALIDATION:]) + "\n")
    backfill_per_case(args.results, args.runs)
    done = {(r["row"], int(r["n"])) for r in read_results(args.results)}
    for key in [k for k in ORDER if k in args.rows]:
        spec = ROWS[key]
        if (key, args.iterations) in done:
            print(f"row {key}: done (in {args.results})", flush=True)
            continue
        print(f"row {key}: {spec['title']}, {args.iterations * spec['times']} iterations "
              f"({datetime.now(timezone.utc):%H:%M} UTC)", flush=True)
        if spec["times"] == 0:
            run_dir, weights = None, START_WEIGHTS
        else:
            run_dir = train_row(key, spec, args.iterations, args.runs, args.data, lists)
            weights = run_dir / "last.pt"
        scores = evaluate(weights, eval_dir(args.runs, key, args.iterations), args.data, lists)
        row = result_row(key, spec, args.iterations, run_dir, scores)
        append_result(args.results, row)
        record_per_case(args.results, key, args.iterations, scores)
        print(f"row {key}: Dice {row['dice_mean']} (lowest {row['dice_min']}), "
              f"{row.get('train_wall_s', 0)} s training", flush=True)
    print(report_table(args.results, args.iterations))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Simulated active learning on LA, with the LA labels as the oracle: random vs disagreement (vs entropy).

Protocol:
- validation = the last 16 cases of ``train.list`` (the validation cases of the training
  protocol); they never enter the pool, and their labels only measure;
- pool = the other cases of ``train.list`` (``--pool N``: its first N), converted to a cohort
  folder (``images/<id>.nrrd`` at 0.625 mm) in a scratch directory, read from the ``.h5``
  files at run time (nothing is copied into the repository);
- round 0: the first ``--start`` pool cases are accepted with their LA labels and CAML is
  trained from scratch (``cpu`` preset, ``--initial-iterations``); every strategy starts from
  this same version;
- each round: the strategy picks ``--per-round`` cases (its top scores), the oracle labels
  them, CAML is fine-tuned from the current version (``al-finetune`` preset, ``--iterations``),
  the new version is measured on the validation cases (Dice through ``segment_volume``).

Writes ``results.csv`` and ``learning_curve.png`` (matplotlib, ``benchmarks/al_plots.py``, as
the LA simulation draws its own) into ``--out``; ``--report`` redraws the picture from the CSV.

    python benchmarks/bench_active_learning.py --pool 12 --val-cases 4 --initial-iterations 20 \\
        --iterations 10 --rounds 3 --device cpu            # a tiny budget (minutes on 2 cores)
    python benchmarks/bench_active_learning.py --device cuda   # the full setting (a GPU)
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "CAMLSegmentation"))
sys.path.insert(0, str(REPO / "benchmarks"))

from CAMLSegmentationLib.activelearning import strategies  # noqa: E402
from CAMLSegmentationLib.activelearning.cohort import Cohort  # noqa: E402
from CAMLSegmentationLib.activelearning.retrain import retrain  # noqa: E402
from CAMLSegmentationLib.io.volume import LA_SPACING, Volume, read_la_h5, write_image, write_mask  # noqa: E402
from CAMLSegmentationLib.training.data import LA_CASES_FOLDER, LA_FILE_NAME, read_id_list  # noqa: E402

VALIDATION_CASES = 16


def la_case(root: Path, case_id: str):
    volume, label = read_la_h5(root / LA_CASES_FOLDER / case_id / LA_FILE_NAME)
    # As a cohort sees it: a plain image file, normalised by the engine like any other.
    return Volume(array=volume.array, spacing=LA_SPACING), label


def build_cohort(root: Path, la_root: Path, ids: Sequence[str]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "oracle").mkdir()
    for case_id in ids:
        volume, label = la_case(la_root, case_id)
        write_image(volume.array, volume, root / "images" / f"{case_id}.nrrd")
        write_mask(label, volume, root / "oracle" / f"{case_id}.nrrd")
    (root / "train.list").write_text("".join(f"{i}\n" for i in ids))
    return root


def oracle_accept(cohort: Cohort, case_ids: Sequence[str]) -> None:
    from CAMLSegmentationLib.io.volume import read_image

    for case_id in case_ids:
        cohort.accept(case_id, read_image(cohort.root / "oracle" / f"{case_id}.nrrd"), role="train")


def validation_dice(weights: Path, cases: Dict[str, tuple], device: str) -> float:
    from CAMLSegmentationLib.inference.metrics import dice
    from CAMLSegmentationLib.inference.predictor import InferenceOptions, load_inference_model, segment_volume

    model = load_inference_model(weights, device)
    return float(np.mean([dice(segment_volume(v, model, InferenceOptions()).mask, lab > 0)
                          for v, lab in cases.values()]))


def pick(cohort: Cohort, strategy: str, k: int, device: str) -> List[str]:
    scored = strategies.score_candidates(cohort, strategy, device)
    order = {c.id: c.position for c in cohort.cases()}
    return strategies.rank(scored["scores"], order)[:k]


def clone_cohort(src: Path, dst: Path) -> Path:
    """A copy sharing the (read-only) image files by hard link."""
    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link_or_copy, ignore=shutil.ignore_patterns("state.sqlite*"))
    # The database is copied (not linked): each strategy changes its own.
    for name in ("state.sqlite",):
        shutil.copy2(src / "caml-al" / name, dst / "caml-al" / name)
    return dst


# --------------------------------------------------------------------------- picture


def draw_learning_curve(out: Path, rows: List[Dict[str, object]]) -> Path:
    """``learning_curve.png`` from the rows of ``results.csv`` (validation Dice in %, per strategy)."""
    from al_plots import learning_curve

    series: Dict[str, Dict[int, List[float]]] = {}
    for r in rows:
        series.setdefault(str(r["strategy"]), {}).setdefault(int(r["labeled"]), []).append(100 * float(r["val_dice"]))
    return learning_curve(out / "learning_curve.png", series, arm_order=("random", "disagreement", "entropy"),
                          title=f"tiny budget: {len(series)} strategies, validation Dice (not a comparison)",
                          ylabel="validation Dice (%)")


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--la-root", type=Path, default=REPO.parent / "shared" / "data" / "LA")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench_active_learning")
    p.add_argument("--work", type=Path, help="scratch folder for the cohorts (default: a temporary one, removed)")
    p.add_argument("--strategies", default="random,disagreement", help="comma-separated (add entropy if time allows)")
    p.add_argument("--pool", type=int, help="use the first N pool cases (default: all 64)")
    p.add_argument("--val-cases", type=int, default=VALIDATION_CASES, help="measure on the first N of the 16")
    p.add_argument("--start", type=int, default=4, help="labeled cases of round 0 (default 4)")
    p.add_argument("--per-round", type=int, default=4, help="cases labeled per round (default 4)")
    p.add_argument("--rounds", type=int, default=3, help="rounds after round 0 (default 3)")
    p.add_argument("--initial-iterations", type=int, default=3000, help="round 0: CAML from scratch (cpu preset)")
    p.add_argument("--iterations", type=int, default=300, help="fine-tuning iterations per round (al-finetune)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", action="store_true", help="only redraw learning_curve.png from --out/results.csv")
    args = p.parse_args(argv)
    if args.report:
        with open(args.out / "results.csv", newline="") as f:
            print(f"wrote {draw_learning_curve(args.out, list(csv.DictReader(f)))}")
        return 0
    if not (args.la_root / "train.list").is_file():
        print(f"LA data not found at {args.la_root}: nothing to simulate", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    ids = read_id_list(args.la_root / "train.list")
    validation_ids = ids[-VALIDATION_CASES:][:args.val_cases]
    pool = ids[:-VALIDATION_CASES][:args.pool]
    names = [s for s in args.strategies.split(",") if s]
    work = Path(args.work or tempfile.mkdtemp(prefix="caml-al-bench-"))
    args.out.mkdir(parents=True, exist_ok=True)
    rows: List[Dict[str, object]] = []
    try:
        t0 = time.time()
        base = build_cohort(work / "base", args.la_root, pool)
        val_cases = {c: la_case(args.la_root, c) for c in validation_ids}
        print(f"cohort of {len(pool)} pool cases and {len(val_cases)} validation cases ready in "
              f"{time.time() - t0:.0f} s", flush=True)
        with Cohort.init(base, val_every=0, seed=args.seed) as cohort:
            oracle_accept(cohort, pool[:args.start])
        t0 = time.time()
        # Every round builds on the last, whatever the (absent) cohort validation says; the simulation's
        # cohorts stay out of the user's model catalog.
        first = retrain(base, iterations=args.initial_iterations, preset="cpu", device=args.device,
                        promote="always", publish=False)
        d0 = validation_dice(Path(first["weights"]), val_cases, args.device)
        print(f"round 0: {args.start} labeled, Dice {d0:.4f} ({time.time() - t0:.0f} s)", flush=True)
        for name in names:
            rows.append({"strategy": name, "round": 0, "labeled": args.start, "val_dice": round(d0, 4),
                         "selected": " ".join(pool[:args.start]), "seconds": round(time.time() - t0, 1)})
            root = clone_cohort(base, work / name)
            for rnd in range(1, args.rounds + 1):
                t0 = time.time()
                with Cohort.open(root) as cohort:
                    chosen = pick(cohort, name, args.per_round, args.device)
                    oracle_accept(cohort, chosen)
                    labeled = len(cohort.training_ids())
                result = retrain(root, iterations=args.iterations, device=args.device, promote="always",
                                 publish=False)
                d = validation_dice(Path(result["weights"]), val_cases, args.device)
                rows.append({"strategy": name, "round": rnd, "labeled": labeled, "val_dice": round(d, 4),
                             "selected": " ".join(chosen), "seconds": round(time.time() - t0, 1)})
                print(f"{name} round {rnd}: {labeled} labeled (+{' '.join(chosen)}), Dice {d:.4f} "
                      f"({time.time() - t0:.0f} s)", flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    draw_learning_curve(args.out, rows)
    print("\n| strategy | round | labeled | validation Dice |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['strategy']} | {r['round']} | {r['labeled']} | {r['val_dice']:.4f} |")
    print(f"\nwrote {args.out / 'results.csv'} and {args.out / 'learning_curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

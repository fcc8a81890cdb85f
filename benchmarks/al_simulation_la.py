"""Does active learning pay on LA? The oracle simulation of the product's own loop (#23).

    OMP_NUM_THREADS=1 python benchmarks/al_simulation_la.py            # run (or continue) the simulation
    python benchmarks/al_simulation_la.py --report                     # learning_curve.png + the README tables

Protocol (fixed; ``--report`` and the README describe results of exactly this):

* start: the bundled ``caml-la-cpu8`` model (version 1 of every arm's cohort) and the 8 cases it
  was trained on, the first 8 of ``train.list``, accepted as training labels;
* pool: cases 9-64 of ``train.list`` (56 images), unlabeled until picked; the images not
  labeled yet are the retrain's unlabeled stream;
* measure: the last 16 of ``train.list``. They are never in a cohort: never in the pool, never
  labeled, never unlabeled data, never used for any choice. After every round the current
  version is measured on them through the one predictor's default protocol (what
  ``caml segment`` gives): Dice and Jaccard (%), 95 % Hausdorff distance (mm);
* rounds: each round the arm picks 4 cases (``--per-round``), one at a time, through the
  product's ``strategies.next_case`` (scores of the current version; the default-protocol
  proposal of the picked case), and ``Cohort.accept`` stores each one's LA label, which records
  the correction effort a user would have had: 1 - Dice between the proposal and the oracle
  label, and the voxels changed. Then ``retrain.retrain`` fine-tunes from the current version
  with the same budget for every arm (the cohort's ``al-finetune`` preset; ``--iterations``
  states a larger one) and ``promote="always"``: every round's candidate becomes current, so
  the arms' curves compare like with like (the product's promotion rule is tested elsewhere).
  4 rounds (``--rounds``) take every arm from 8 to 24 labels;
* arms: ``random`` with seeds 0, 1, 2 (``--random-seeds``); ``disagreement``; ``entropy``;
  ``disagreement-supervised``: disagreement picks, retrained on the labeled cases alone
  (``retrain(supervised_only=True)``, no unlabeled stream), the ablation of "the rest of the
  cohort as unlabeled data". The seed is the cohort's: the random strategy's draws and the
  training seed; the model arms use seed 0.

Where things are: the images are written once as NRRD from the LA ``.h5`` files with the
engine's own I/O into a scratch folder outside the repository (``--work``, default
``~/.cache/caml-al-simulation-la``), and each (arm, seed) has its own cohort there, its images
hard links to those. Nothing of the LA data enters the repository: the results folder
(``benchmarks/results/active_learning_la``) holds ``results.csv`` (one row per cell: arm, seed,
round, labels, the measure, the picks and their effort, seconds and CPU seconds),
``protocol.json`` and ``learning_curve.png``.

Resumable at any moment: every (arm, seed, round) cell is appended to ``results.csv`` (an atomic
rewrite) as soon as it finishes, and a re-run skips finished cells. An arm's cohort carries the
state of an unfinished round: picks already accepted stay, an interrupted retrain continues from
its checkpoint (``retrain(resume=True)``), a version trained but not measured is measured. A
cohort that is gone (a wiped scratch folder, another machine) is rebuilt deterministically: the
start cohort, then each finished round's picks as the CSV records them, each followed by the
same retrain (same seed and budget). A run prints the estimated time left after each cell, from
the mean time of the finished cells. The cells run round by round across the arms, so a run
stopped early leaves every arm at the same number of labels. ``--max-cells N`` stops after N
cells, to share the CPU with other long jobs one after another.

A changed protocol (model, preset, budget, pool, measure cases, per-round) against the results
folder's ``protocol.json`` is refused: use another ``--results`` folder for a rehearsal.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "CAMLSegmentation"))
sys.path.insert(0, str(REPO / "benchmarks"))

#: arm name: (selection strategy, supervised-only retraining)
ARMS = {"random": ("random", False), "disagreement": ("disagreement", False), "entropy": ("entropy", False),
        "disagreement-supervised": ("disagreement", True)}
START_LABELS = 8  # caml-la-cpu8's labeled cases: the first 8 of train.list
POOL_END = 64  # the pool is cases 9..64 of train.list
MEASURE_CASES = 16  # the last 16 of train.list
DEFAULT_MODEL = "caml-la-cpu8"
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "active_learning_la"
DEFAULT_WORK = Path.home() / ".cache" / "caml-al-simulation-la"
FIELDS = ("arm", "seed", "round", "labels", "strategy", "supervised_only", "iterations", "version", "dice_pct",
          "dice_sd", "jaccard_pct", "hd95_mm", "case_dice_pct", "picked", "picked_effort_pct",
          "picked_voxels_changed", "effort_pct", "voxels_changed", "pick_s", "train_s", "measure_s", "cell_s",
          "cpu_s", "finished_at")


def la_root() -> Path:
    return Path(os.environ.get("CAML_LA_ROOT", REPO.parent / "shared" / "data" / "LA"))


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def say(text: str) -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------- results file


def read_rows(path: Path) -> List[Dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: Dict[str, Any]) -> None:
    """Append one cell: the whole file is rewritten beside and renamed over it, so a kill at any
    moment leaves the old or the new file, never half a line."""
    rows = read_rows(path) + [{k: row.get(k, "") for k in FIELDS}]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(FIELDS))
        writer.writeheader()
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cell_key(row: Dict[str, Any]) -> Tuple[str, int, int]:
    return str(row["arm"]), int(row["seed"]), int(row["round"])


def check_protocol(results: Path, protocol: Dict[str, Any]) -> None:
    """The results folder holds one protocol; another is refused (one line), the first is recorded."""
    path = results / "protocol.json"
    if path.is_file():
        recorded = json.loads(path.read_text())
        changed = [k for k in protocol if recorded.get(k) != protocol[k]]
        if changed:
            raise SystemExit(f"{path}: these results were made with another protocol ({', '.join(changed)}: "
                             f"{', '.join(f'{recorded.get(k)} -> {protocol[k]}' for k in changed)}); "
                             "use another --results folder")
        return
    results.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(protocol, indent=2) + "\n")


# --------------------------------------------------------------------------- scratch cohorts


def write_images(work: Path, ids: Sequence[str]) -> Path:
    """``work/source``: images/<id>.nrrd and oracle/<id>.nrrd of ``ids``, from the LA .h5 files
    through the engine's I/O (written once; each file appears whole, by a rename)."""
    from CAMLSegmentationLib.io.volume import read_la_h5, write_image, write_mask
    from CAMLSegmentationLib.training.sources import LA_CASES_FOLDER, LA_FILE_NAME

    source = work / "source"
    (source / "images").mkdir(parents=True, exist_ok=True)
    (source / "oracle").mkdir(exist_ok=True)
    todo = [c for c in ids if not (source / "images" / f"{c}.nrrd").is_file()
            or not (source / "oracle" / f"{c}.nrrd").is_file()]
    for n, case_id in enumerate(todo, start=1):
        volume, label = read_la_h5(la_root() / LA_CASES_FOLDER / case_id / LA_FILE_NAME)
        for folder, write, array in (("oracle", write_mask, label), ("images", write_image, volume.array)):
            target = source / folder / f"{case_id}.nrrd"
            tmp = target.with_name(f".{case_id}.{os.getpid()}.nrrd")
            write(array, volume, tmp)
            os.replace(tmp, target)
        say(f"  wrote image and oracle label {n}/{len(todo)}: {case_id}")
    return source


def oracle_label(work: Path, case_id: str) -> Any:
    from CAMLSegmentationLib.io.volume import read_image

    return read_image(work / "source" / "oracle" / f"{case_id}.nrrd")


def build_cohort(work: Path, root: Path, ids: Sequence[str], start: Sequence[str], weights: Path,
                 seed: int, preset: str) -> None:
    """A fresh cohort at ``root``: ``ids``' images (hard links), version 1 = ``weights``, ``start``
    accepted as training labels. Built aside and renamed into place: it appears complete or not at all."""
    from CAMLSegmentationLib.activelearning.cohort import Cohort

    tmp = root.with_name(f".{root.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    for case_id in ids:
        src = work / "source" / "images" / f"{case_id}.nrrd"
        try:
            os.link(src, tmp / "images" / src.name)
        except OSError:
            shutil.copyfile(src, tmp / "images" / src.name)
    (tmp / "train.list").write_text("".join(f"{c}\n" for c in ids))  # the cohort's order: LA's
    with Cohort.init(tmp, val_every=0, seed=seed, model=weights, preset=preset) as cohort:
        for case_id in start:
            cohort.accept(case_id, oracle_label(work, case_id), role="train")
    os.replace(tmp, root)


def accepted_in_order(root: Path) -> List[str]:
    from CAMLSegmentationLib.activelearning.cohort import ACCEPTED, Cohort

    with Cohort.open(root) as cohort:
        rows = sorted(cohort.cases(ACCEPTED), key=lambda c: c.accept_order)
    return [c.id for c in rows]


# --------------------------------------------------------------------------- one round


class Simulation:
    def __init__(self, args: argparse.Namespace) -> None:
        from CAMLSegmentationLib.model.catalog import find_model, verify
        from CAMLSegmentationLib.training.sources import read_id_list

        self.args = args
        ids = read_id_list(la_root() / "train.list")
        self.start = ids[:START_LABELS]
        self.pool = ids[START_LABELS:POOL_END][:args.pool]
        self.measure_ids = ids[-MEASURE_CASES:][:args.measure]
        assert not set(self.measure_ids) & set(self.start + self.pool)
        self.weights = verify(find_model(args.model))
        self.work = args.work
        self.results = args.results / "results.csv"
        self.arms = [(arm, seed) for arm in args.arms for seed in (args.random_seeds if arm == "random" else [0])]
        self.rows = read_rows(self.results)

    def protocol(self) -> Dict[str, Any]:
        from CAMLSegmentationLib.activelearning.cohort import sha256_file

        return {"model": self.args.model, "model_sha256": sha256_file(self.weights), "preset": self.args.preset,
                "iterations": self.args.iterations, "per_round": self.args.per_round,
                "start": self.start, "pool": len(self.pool), "measure": self.measure_ids}

    def cohort_root(self, arm: str, seed: int) -> Path:
        return self.work / "arms" / f"{arm}-seed{seed}"

    def done(self, arm: str, seed: int) -> List[Dict[str, str]]:
        """The arm's finished cells after round 0, in round order."""
        rows = sorted((r for r in self.rows if r["arm"] == arm and int(r["seed"]) == seed and int(r["round"]) > 0),
                      key=lambda r: int(r["round"]))
        if [int(r["round"]) for r in rows] != list(range(1, len(rows) + 1)):
            raise SystemExit(f"{self.results}: arm {arm} seed {seed} has rounds {[r['round'] for r in rows]}, "
                             "not 1, 2, ...: the file was edited; remove the arm's rows to run it again")
        return rows

    # ---------------------------------------------------------------- the cohort of an arm
    def ensure_cohort(self, arm: str, seed: int) -> Path:
        """The arm's cohort, built (and its finished rounds replayed) when it is not there, and
        checked against the CSV: its accepted cases must start with the start cases and the
        finished rounds' picks, in that order."""
        from CAMLSegmentationLib.activelearning.cohort import db_path

        root = self.cohort_root(arm, seed)
        done = self.done(arm, seed)
        if not db_path(root).is_file():
            shutil.rmtree(root, ignore_errors=True)
            say(f"  building the cohort of {arm} seed {seed} in {root}")
            build_cohort(self.work, root, self.start + self.pool, self.start, self.weights, seed, self.args.preset)
            for row in done:
                say(f"  replaying round {row['round']} of {arm} seed {seed} (the cohort was gone): accepting "
                    f"{row['picked']} as recorded, then the same retrain (the measure stays as recorded)")
                from CAMLSegmentationLib.activelearning.cohort import Cohort

                with Cohort.open(root) as cohort:
                    for case_id in row["picked"].split():
                        cohort.accept(case_id, oracle_label(self.work, case_id), role="train")
                self.retrain(root, arm)
        expected = self.start + [c for row in done for c in row["picked"].split()]
        accepted = accepted_in_order(root)
        if accepted[:len(expected)] != expected or len(accepted) > len(expected) + self.args.per_round:
            raise SystemExit(f"{root}: this cohort's accepted cases do not follow {self.results} for {arm} seed "
                             f"{seed}; remove the folder and run again: it is rebuilt from the CSV")
        return root

    def retrain(self, root: Path, arm: str, resume: bool = False) -> Dict[str, Any]:
        from CAMLSegmentationLib.activelearning.retrain import retrain

        # publish=False: the simulation's cohorts never enter the user's model catalog.
        return retrain(root, iterations=self.args.iterations, device=self.args.device, promote="always",
                       resume=resume, supervised_only=ARMS[arm][1], publish=False, progress=TrainingProgress())

    # ---------------------------------------------------------------- a cell
    def run_round(self, arm: str, seed: int, rnd: int) -> Dict[str, Any]:
        from CAMLSegmentationLib.activelearning import strategies
        from CAMLSegmentationLib.activelearning.cohort import Cohort

        k = self.args.per_round
        strategy, supervised = ARMS[arm]
        clock, cpu = time.perf_counter(), time.process_time()
        root = self.ensure_cohort(arm, seed)
        before = START_LABELS + k * (rnd - 1)
        with Cohort.open(root) as cohort:
            picked = accepted_in_order(root)[before:]
            if picked:
                say(f"  continuing round {rnd}: {len(picked)} pick(s) already accepted")
            while len(picked) < k:
                nxt = strategies.next_case(cohort, strategy, self.args.device)
                cohort.accept(nxt["case"], oracle_label(self.work, nxt["case"]), role="train")
                picked.append(nxt["case"])
                say(f"  picked {nxt['case']} ({strategy} score {nxt['score']:.4f}; {nxt['computed']} case(s) "
                    "scored)")
            efforts = {c["case"]: c for c in cohort.corrections()}
            versions = len(cohort.versions())
            jobs = [j for j in cohort.jobs() if j["kind"] == "retrain"]
            current = cohort.current_version()
        pick_s = time.perf_counter() - clock
        clock = time.perf_counter()
        if versions < rnd + 1:  # this round's retrain has not committed its version yet
            resume = bool(jobs) and jobs[-1]["state"] in ("interrupted", "cancelled", "failed") \
                and jobs[-1]["base_version"] == current
            if resume:
                say(f"  resuming retrain job {jobs[-1]['id']} (from its checkpoint, when it saved one)")
            self.retrain(root, arm, resume=resume)
        train_s = time.perf_counter() - clock
        clock = time.perf_counter()
        with Cohort.open(root) as cohort:
            version = cohort.current_version()
            weights = cohort.weights(version)
        measured = self.measure(weights)
        measure_s = time.perf_counter() - clock
        effort = [efforts[c] for c in picked]
        pct = [100 * (1 - e["dice"]) if e["dice"] is not None else float("nan") for e in effort]
        voxels = [e["voxels_changed"] if e["voxels_changed"] is not None else float("nan") for e in effort]
        return dict(measured, arm=arm, seed=seed, round=rnd, labels=before + k, strategy=strategy,
                    supervised_only=int(supervised), iterations=self.iterations(), version=version,
                    picked=" ".join(picked), picked_effort_pct=" ".join(f"{v:.2f}" for v in pct),
                    picked_voxels_changed=" ".join(f"{v:.0f}" for v in voxels),
                    effort_pct=f"{_mean(pct):.2f}", voxels_changed=f"{_mean(voxels):.0f}",
                    pick_s=f"{pick_s:.1f}", train_s=f"{train_s:.1f}", measure_s=f"{measure_s:.1f}",
                    cell_s=f"{pick_s + train_s + measure_s:.1f}", cpu_s=f"{time.process_time() - cpu:.1f}",
                    finished_at=now())

    def iterations(self) -> int:
        from CAMLSegmentationLib.training.presets import load_preset

        return self.args.iterations or load_preset(self.args.preset).iterations

    def measure(self, weights: Path) -> Dict[str, Any]:
        """The measure cases through ``caml segment``'s default protocol: Dice, Jaccard (%), HD95 (mm)."""
        import numpy as np
        from CAMLSegmentationLib.inference.metrics import evaluate_case
        from CAMLSegmentationLib.inference.predictor import InferenceOptions, load_inference_model, segment_volume
        from CAMLSegmentationLib.io.volume import read_la_h5
        from CAMLSegmentationLib.training.sources import LA_CASES_FOLDER, LA_FILE_NAME

        model = load_inference_model(weights, self.args.device)
        scores = []
        for case_id in self.measure_ids:
            volume, label = read_la_h5(la_root() / LA_CASES_FOLDER / case_id / LA_FILE_NAME)
            mask = segment_volume(volume, model, InferenceOptions()).mask
            scores.append(evaluate_case(mask, label, volume.spacing))
        dice = np.array([100 * s.dice for s in scores])
        return {"dice_pct": f"{dice.mean():.2f}", "dice_sd": f"{dice.std():.2f}",
                "jaccard_pct": f"{100 * np.mean([s.jaccard for s in scores]):.2f}",
                "hd95_mm": f"{np.nanmean([s.hd95_mm for s in scores]):.2f}",
                "case_dice_pct": " ".join(f"{d:.2f}" for d in dice)}

    def start_cell(self, arm: str, seed: int) -> Dict[str, Any]:
        """Round 0: the start model, the same for every arm (measured once, then copied)."""
        clock, cpu = time.perf_counter(), time.process_time()
        known = next((r for r in self.rows if int(r["round"]) == 0), None)
        measured = {k: known[k] for k in ("dice_pct", "dice_sd", "jaccard_pct", "hd95_mm", "case_dice_pct")} \
            if known else self.measure(self.weights)
        strategy, supervised = ARMS[arm]
        return dict(measured, arm=arm, seed=seed, round=0, labels=START_LABELS, strategy=strategy,
                    supervised_only=int(supervised), iterations=0, version=1, picked="", effort_pct="",
                    voxels_changed="", pick_s="0", train_s="0", measure_s=f"{time.perf_counter() - clock:.1f}",
                    cell_s=f"{time.perf_counter() - clock:.1f}", cpu_s=f"{time.process_time() - cpu:.1f}",
                    finished_at=now())

    # ---------------------------------------------------------------- the whole run
    def cells(self) -> List[Tuple[str, int, int]]:
        return [(arm, seed, rnd) for rnd in range(self.args.rounds + 1) for arm, seed in self.arms]

    def run(self) -> int:
        import fcntl

        self.work.mkdir(parents=True, exist_ok=True)
        lock = open(self.work / "simulation.lock", "w")  # held until this process ends, however it ends
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SystemExit(f"{self.work}: another simulation runs on this scratch folder; wait for it or stop "
                             "it (a second one would pick and train in the same cohorts)") from None
        check_protocol(self.args.results, self.protocol())
        if START_LABELS + self.args.rounds * self.args.per_round > START_LABELS + len(self.pool):
            raise SystemExit(f"{self.args.rounds} rounds of {self.args.per_round} need more than the "
                             f"{len(self.pool)} pool cases")
        say(f"LA active-learning simulation: {len(self.arms)} arm(s) x {self.args.rounds} round(s) of "
            f"{self.args.per_round}, pool {len(self.pool)}, measure {len(self.measure_ids)} cases, "
            f"{self.iterations()} iterations per retrain; scratch {self.work}; results {self.results}")
        write_images(self.work, self.start + self.pool)
        finished = {cell_key(r) for r in self.rows}
        todo = [c for c in self.cells() if c not in finished]
        ran = 0
        for arm, seed, rnd in todo:
            if self.args.max_cells is not None and ran >= self.args.max_cells:
                say(f"stopping after {ran} cell(s) (--max-cells); run the same command again to continue")
                return 0
            say(f"cell {arm} seed {seed} round {rnd} ({START_LABELS + rnd * self.args.per_round} labels)")
            row = self.start_cell(arm, seed) if rnd == 0 else self.run_round(arm, seed, rnd)
            append_row(self.results, row)
            self.rows.append({k: str(v) for k, v in row.items()})
            ran += 1
            say(f"  done: Dice {row['dice_pct']} %, HD95 {row['hd95_mm']} mm"
                + (f", picks' effort {row['effort_pct']} % (1 - Dice)" if rnd else "")
                + f" in {float(row['cell_s']):.0f} s (CPU {float(row['cpu_s']):.0f} s)")
            say(f"  {self.estimate(todo[todo.index((arm, seed, rnd)) + 1:])}")
        say(f"all {len(self.cells())} cells are in {self.results}; python {Path(__file__).name} --report draws "
            "the picture and prints the tables")
        return 0

    def estimate(self, left: Sequence[Tuple[str, int, int]]) -> str:
        rounds = [float(r["cell_s"]) for r in self.rows if int(r["round"]) > 0]
        n = sum(1 for c in left if c[2] > 0)
        if not n:
            return "no round left"
        if not rounds:
            return f"{n} round cell(s) left; the first one will tell how long each takes"
        per = sum(rounds) / len(rounds)
        return (f"{n} round cell(s) left, about {n * per / 3600:.1f} h at {per / 60:.1f} min per cell "
                f"(mean of {len(rounds)} finished)")


class TrainingProgress:
    """A line per tenth of a retrain (the trainer reports every iteration)."""

    def __init__(self) -> None:
        self.shown: Dict[str, int] = {}

    def __call__(self, event: Any) -> None:
        if event.stage != "train" or not event.total:
            return
        tenth = int(10 * event.done / event.total)
        if self.shown.get(event.stage) != tenth:
            self.shown[event.stage] = tenth
            say(f"    retrain: iteration {event.done}/{event.total}")


def _mean(values: Iterable[float]) -> float:
    import math

    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


# --------------------------------------------------------------------------- report


def series(rows: Sequence[Dict[str, str]], column: str, rounds_from: int = 0) -> Dict[str, Dict[int, List[float]]]:
    """``{arm: {labels: [value per seed, in seed order]}}`` of a numeric column."""
    out: Dict[str, Dict[int, List[float]]] = {}
    for r in sorted(rows, key=lambda r: (r["arm"], int(r["seed"]), int(r["round"]))):
        if int(r["round"]) >= rounds_from and r[column] not in ("", "nan"):
            out.setdefault(r["arm"], {}).setdefault(int(r["labels"]), []).append(float(r[column]))
    return out


def labels_to_reach(curve: Dict[int, float], target: float) -> Optional[float]:
    """The labels at which a curve first reaches ``target``, linearly interpolated between rounds."""
    xs = sorted(curve)
    for n, x in enumerate(xs):
        if curve[x] >= target:
            if n == 0:
                return float(x)
            x0, y0 = xs[n - 1], curve[xs[n - 1]]
            return x0 + (x - x0) * (target - y0) / (curve[x] - y0)
    return None


#: The README's block that ``--report`` rewrites: everything between these two lines.
README_BLOCK = ("<!-- al-simulation-report: generated by `python benchmarks/al_simulation_la.py --report` -->",
                "<!-- al-simulation-report: end -->")


def report(results: Path, readme: Optional[Path] = None) -> int:
    """Draw learning_curve.png and write the tables to ``report.md`` beside results.csv, and between
    ``README_BLOCK``'s lines in ``readme`` when it has them; the tables are printed too."""
    import numpy as np
    from al_plots import learning_curve

    rows = read_rows(results / "results.csv")
    if not rows:
        raise SystemExit(f"{results / 'results.csv'}: no results yet")
    dice = series(rows, "dice_pct")
    effort = series(rows, "effort_pct", rounds_from=1)
    arms = [a for a in ARMS if a in dice]
    mean = {a: {x: float(np.mean(v)) for x, v in dice[a].items()} for a in arms}
    sd = {a: {x: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for x, v in dice[a].items()} for a in arms}
    seeds = {a: max(len(v) for v in dice[a].values()) for a in arms}
    picture = learning_curve(results / "learning_curve.png", dice, effort=effort, arm_order=list(ARMS),
                             title=f"LA oracle simulation from caml-la-cpu8, 4 picks and a retrain per round; "
                                   f"{len(rows[0]['case_dice_pct'].split())} measure case(s)",
                             effort_label="correction effort of the round's picks: 1 - Dice (%)")
    say(f"wrote {picture}\n")
    lines: List[str] = []

    def put(text: str) -> None:
        say(text)
        lines.append(text)

    columns = sorted({x for a in arms for x in dice[a]})  # the protocol's: 8, 12, 16, 20, 24
    put("Dice (%) on the measure cases after each round (random: mean +- sd over its seeds)\n")
    put("| arm | " + " | ".join(f"{x} labels" for x in columns) + " |")
    put("|---|" + "---|" * len(columns))
    for a in arms:
        cells = [("-" if x not in dice[a] else f"{mean[a][x]:.2f} +- {sd[a][x]:.2f}" if seeds[a] > 1
                  else f"{mean[a][x]:.2f}") for x in columns]
        put(f"| {a}{f' ({seeds[a]} seeds)' if seeds[a] > 1 else ''} | " + " | ".join(cells) + " |")
    if "random" in arms:
        complete = [x for x, v in dice["random"].items() if len(v) == seeds["random"]]
        final = max(complete)
        target = mean["random"][final]
        put(f"\nLabels each arm needs to reach random's final Dice ({target:.2f} % at {final} labels; "
            "linear between rounds; the random seeds one by one give its spread)\n")
        put("| arm | labels | fewer labels than random |\n|---|---|---|")
        for a in arms:
            reached = labels_to_reach(mean[a], target)
            shown = "not reached" if reached is None else f"{reached:.1f}"
            saving = "-" if reached is None else f"{100 * (1 - reached / final):.0f} %"
            put(f"| {a}{' (mean)' if seeds[a] > 1 else ''} | {shown} | {saving} |")
        for seed in range(seeds["random"]):
            own = {x: v[seed] for x, v in dice["random"].items() if len(v) > seed}
            reached = labels_to_reach(own, target)
            put(f"| random seed {seed} alone | {'not reached' if reached is None else f'{reached:.1f}'} | "
                f"{'-' if reached is None else f'{100 * (1 - reached / final):.0f} %'} |")
        put("\nEach arm against random at equal labels, in units of random's sd over seeds:")
        for a in arms:
            if a == "random":
                continue
            diffs = [f"{x}: {mean[a][x] - mean['random'][x]:+.2f}"
                     + (f" ({(mean[a][x] - mean['random'][x]) / sd['random'][x]:+.1f} sd)" if sd["random"].get(x)
                        else "") for x in columns if x in mean[a] and x in mean["random"] and x > START_LABELS]
            put(f"- {a}: " + ", ".join(diffs))
    if "disagreement" in arms and "disagreement-supervised" in arms:
        put("\nThe unlabeled stream at equal labels: disagreement minus disagreement-supervised, Dice (%), "
            "mean +- sd of the paired per-case differences over the measure cases")
        by = {(r["arm"], int(r["labels"])): np.array([float(v) for v in r["case_dice_pct"].split()]) for r in rows
              if r["arm"] in ("disagreement", "disagreement-supervised")}
        for x in columns:
            if x > START_LABELS and ("disagreement", x) in by and ("disagreement-supervised", x) in by:
                d = by[("disagreement", x)] - by[("disagreement-supervised", x)]
                put(f"- {x} labels: {d.mean():+.2f} +- {d.std(ddof=1):.2f} ({int((d > 0).sum())} of {d.size} "
                    "cases better with it)")
    put("\nCorrection effort of the picked cases (1 - Dice between the proposal and the oracle label, %; voxels "
        "changed), mean over every pick of the arm, and per round\n")
    put("| arm | 1 - Dice (%) | voxels changed | per round (1 - Dice %) |\n|---|---|---|---|")
    for a in arms:
        picks = [float(v) for r in rows if r["arm"] == a for v in r["picked_effort_pct"].split() if v != "nan"]
        voxels = [float(v) for r in rows if r["arm"] == a for v in r["picked_voxels_changed"].split() if v != "nan"]
        per_round = ", ".join(f"{np.mean(v):.1f}" for _, v in sorted((effort.get(a) or {}).items()))
        put(f"| {a} | {np.mean(picks):.2f} | {np.mean(voxels):.0f} | {per_round} |" if picks
            else f"| {a} | - | - | - |")
    cpu = sum(float(r["cpu_s"]) for r in rows)
    wall = sum(float(r["cell_s"]) for r in rows)
    put(f"\n{len(rows)} cells; CPU time {cpu / 3600:.2f} h, wall time {wall / 3600:.2f} h (cells only)")
    text = "\n".join(lines).strip() + "\n"
    (results / "report.md").write_text(text)
    say(f"\nwrote {results / 'report.md'}")
    if readme is not None and readme.is_file():
        old = readme.read_text()
        head, tail = README_BLOCK
        if head in old and tail in old:
            before, rest = old.split(head, 1)
            _, after = rest.split(tail, 1)
            readme.write_text(f"{before}{head}\n\n{text}\n{tail}{after}")
            say(f"rewrote the tables in {readme}")
    return 0


# --------------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--report", action="store_true", help="from results.csv: draw learning_curve.png, write the "
                                                         "tables to report.md (and into the README for the default "
                                                         "--results), then stop")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS,
                   help=f"results folder (default {DEFAULT_RESULTS.relative_to(REPO)})")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK,
                   help=f"scratch folder for the images and the arms' cohorts, outside the repository "
                        f"(default {DEFAULT_WORK})")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)} (default all)")
    p.add_argument("--random-seeds", default="0,1,2", help="seeds of the random arm (default 0,1,2)")
    p.add_argument("--rounds", type=int, default=4, help="rounds after the start (default 4: 8 -> 24 labels)")
    p.add_argument("--per-round", type=int, default=4, help="cases picked per round (default 4)")
    p.add_argument("--iterations", type=int, help="retrain iterations per round (default: the preset's)")
    p.add_argument("--preset", default="al-finetune", help="the cohorts' retrain preset (default al-finetune)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"the start model, a catalog id (default {DEFAULT_MODEL})")
    p.add_argument("--pool", type=int, help="only the first N pool cases (a rehearsal; default all 56)")
    p.add_argument("--measure", type=int, default=MEASURE_CASES,
                   help=f"only the first N of the {MEASURE_CASES} measure cases (a rehearsal)")
    p.add_argument("--max-cells", type=int, help="stop after N cells (run again to continue)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)
    if args.report:
        return report(args.results, REPO / "README.md" if args.results == DEFAULT_RESULTS else None)
    if not (la_root() / "train.list").is_file():
        raise SystemExit(f"needs the LA data in {la_root()} (or CAML_LA_ROOT)")
    args.arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    args.random_seeds = [int(s) for s in args.random_seeds.split(",") if s]
    args.work = args.work.expanduser().resolve()
    if args.work == REPO or REPO in args.work.parents:
        raise SystemExit(f"--work {args.work} is inside the repository: the LA images must stay outside it")
    import torch

    torch.set_num_threads(args.threads)
    return Simulation(args).run()


if __name__ == "__main__":
    sys.exit(main())

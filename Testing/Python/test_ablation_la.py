"""benchmarks/ablation_la.py end to end on a generated LA-layout dataset: a row trains with the real
`caml train`, is scored with the real `caml evaluate`, lands in the results CSV, and a re-run neither
trains nor scores it again; a stopped row resumes where it stopped."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

from synthetic import write_la_layout

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "ablation_la.py"


def command(tmp_path: Path, *extra: str):
    return [sys.executable, str(SCRIPT), "--iterations", "3", "--data", str(tmp_path / "LA"),
            "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results.csv"), *extra]


def run_ablation(tmp_path: Path, *extra: str) -> str:
    proc = subprocess.run(command(tmp_path, *extra), capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_rows_resume_and_are_not_redone(tmp_path: Path) -> None:
    # 80 cases: the script's split is cpu64's (first 64 labeled, last 16 validation).
    write_la_layout(tmp_path / "LA", 80, shape=(24, 24, 24))
    run_dir = tmp_path / "runs" / "base-n3"
    log = run_dir / "train.log"

    # Stopped (SIGTERM) once row a's training has begun: caml train keeps a resumable last.pt.
    proc = subprocess.Popen(command(tmp_path, "--rows", "start", "base"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=REPO)
    deadline = time.time() + 600
    while not (log.is_file() and "from iteration 0" in log.read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.5)
    proc.terminate()
    stopped = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0 and "stopped by signal 15; re-run the same command to resume" in stopped
    assert (run_dir / "last.pt").is_file()
    assert [r["row"] for r in rows(tmp_path / "results.csv")] == ["start"]

    out = run_ablation(tmp_path, "--rows", "start", "base")
    assert "row start: done" in out and "--resume" in out and "--init-weights" not in out
    resumed_from = [int(line.rsplit(" ", 1)[1]) for line in log.read_text().splitlines() if "from iteration" in line]
    assert resumed_from[0] == 0 and 0 < resumed_from[1] < 3
    results = rows(tmp_path / "results.csv")
    assert [r["row"] for r in results] == ["start", "base"]
    base = results[1]
    assert base["iterations"] == "3" and base["warm_start"] == "True"
    assert float(base["train_wall_s"]) > 0 and float(base["s_per_iteration"]) > 0
    assert 0.0 <= float(base["dice_min"]) <= float(base["dice_mean"]) <= 100.0
    assert base["dice_min_case"].startswith("case0")
    # The validation cases are the last 16, the labeled (and unlabeled) stream the first 64.
    assert (tmp_path / "runs" / "val16.list").read_text().split() == [f"case{i:03d}" for i in range(64, 80)]
    assert (tmp_path / "runs" / "labeled64.list").read_text().split() == [f"case{i:03d}" for i in range(64)]
    stamps = {p: p.stat().st_mtime_ns for p in (run_dir / "last.pt", run_dir / "eval" / "metrics.json")}

    # A re-run skips the finished rows.
    again = run_ablation(tmp_path, "--rows", "start", "base")
    assert "row base: done" in again and "\n$ " not in again  # no command ran
    assert len(rows(tmp_path / "results.csv")) == 2

    # A row trained but not recorded (the CSV lost) resumes a finished run: nothing trains or is re-scored.
    (tmp_path / "results.csv").unlink()
    assert "--resume" in run_ablation(tmp_path, "--rows", "base")
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert rows(tmp_path / "results.csv")[0]["dice_mean"] == base["dice_mean"]
    per_case = rows(tmp_path / "per_case_dice.csv")
    assert sorted(r["row"] for r in per_case) == ["base"] * 16 + ["start"] * 16  # recorded once each

    table = run_ablation(tmp_path, "--report")
    assert "| a. cpu preset, warm start | 3 |" in table
    assert "| c. 96x96x48 patch, warm start | not run yet |" in table


def test_the_model_card_shows_the_recorded_ablation() -> None:
    # The card's table is `ablation_la.py --report` of the committed results, not a copy that drifts.
    results = REPO / "benchmarks" / "results" / "ablation_la" / "results.csv"
    n = int(rows(results)[0]["n"])
    table = subprocess.run([sys.executable, str(SCRIPT), "--iterations", str(n), "--report"], capture_output=True,
                           text=True, cwd=REPO, check=True).stdout
    card = (REPO / "Resources" / "Models" / "README.md").read_text()
    assert table.strip() and table.strip() in card
    assert "not run yet" not in table and f"N = {n} iterations" in card

"""benchmarks/ablation_la.py end to end on a generated LA-layout dataset: a row trains with the real
`caml train`, is scored with the real `caml evaluate`, lands in the results CSV, and a re-run neither
trains nor scores it again."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from synthetic import write_la_layout

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "ablation_la.py"


def run_ablation(tmp_path: Path, *extra: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--iterations", "2", "--data", str(tmp_path / "LA"),
                           "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results.csv"), *extra],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_row_trains_scores_and_is_not_redone(tmp_path: Path) -> None:
    # 80 cases: the script's split is cpu64's (first 64 labeled, last 16 validation).
    write_la_layout(tmp_path / "LA", 80, shape=(24, 24, 24))
    out = run_ablation(tmp_path, "--rows", "start", "base")
    results = rows(tmp_path / "results.csv")
    assert [r["row"] for r in results] == ["start", "base"]
    base = results[1]
    assert base["iterations"] == "2" and base["warm_start"] == "True"
    assert float(base["train_wall_s"]) > 0 and float(base["s_per_iteration"]) > 0
    assert 0.0 <= float(base["dice_min"]) <= float(base["dice_mean"]) <= 100.0
    assert base["dice_min_case"].startswith("case0")
    run_dir = tmp_path / "runs" / "base-n2"
    assert "--init-weights" in out and (run_dir / "last.pt").is_file()
    # The validation cases are the last 16, the labeled (and unlabeled) stream the first 64.
    assert (tmp_path / "runs" / "val16.list").read_text().split() == [f"case{i:03d}" for i in range(64, 80)]
    stamps = {p: p.stat().st_mtime_ns for p in (run_dir / "last.pt", run_dir / "eval" / "metrics.json")}

    # A re-run skips the finished rows.
    again = run_ablation(tmp_path, "--rows", "start", "base")
    assert "row base: done" in again and "\n$ " not in again  # no command ran
    assert len(rows(tmp_path / "results.csv")) == 2

    # Rows trained but not yet recorded (the CSV lost, or the job stopped between training and
    # the CSV) continue with --resume, which finds the run finished: nothing trains or is re-scored.
    (tmp_path / "results.csv").unlink()
    resumed = run_ablation(tmp_path, "--rows", "base")
    assert "--resume" in resumed and "--init-weights" not in resumed
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert rows(tmp_path / "results.csv")[0]["dice_mean"] == base["dice_mean"]

    table = run_ablation(tmp_path, "--report")
    assert "| a. cpu preset, warm start | 2 |" in table
    assert "| c. 96x96x48 patch, warm start | not run yet |" in table

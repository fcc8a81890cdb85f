"""The LA active-learning simulation script (benchmarks/al_simulation_la.py): its results file,
its report, and (slow, with the LA data) a run with a tiny budget that stops and continues.

The real simulation takes hours and is never run here.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import al_simulation_la as sim  # noqa: E402


def cell(arm: str, seed: int, rnd: int, dice: float, effort: str = "", case_dice: str = "") -> dict:
    return {"arm": arm, "seed": seed, "round": rnd, "labels": 8 + 4 * rnd, "dice_pct": f"{dice:.2f}",
            "case_dice_pct": case_dice or f"{dice:.2f} {dice:.2f}", "picked": "a b c d" if rnd else "",
            "picked_effort_pct": effort if rnd else "", "picked_voxels_changed": "100 200 300 400" if rnd else "",
            "effort_pct": f"{sum(map(float, effort.split())) / len(effort.split()):.2f}" if effort else "",
            "cell_s": "60", "cpu_s": "50"}


def test_cells_are_appended_whole_and_read_back(tmp_path):
    path = tmp_path / "results.csv"
    sim.append_row(path, cell("random", 0, 0, 89.8))
    sim.append_row(path, cell("random", 0, 1, 90.1, effort="10 12 14 16"))
    rows = sim.read_rows(path)
    assert [sim.cell_key(r) for r in rows] == [("random", 0, 0), ("random", 0, 1)]
    assert list(rows[0]) == list(sim.FIELDS) and rows[1]["picked_effort_pct"] == "10 12 14 16"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # no temporary left


def test_a_changed_protocol_is_refused(tmp_path):
    sim.check_protocol(tmp_path, {"iterations": 300, "pool": 56})
    sim.check_protocol(tmp_path, {"iterations": 300, "pool": 56})
    with pytest.raises(SystemExit, match=r"another protocol \(iterations: 300 -> 2\); use another --results"):
        sim.check_protocol(tmp_path, {"iterations": 2, "pool": 56})


def test_labels_to_reach_interpolates_between_rounds():
    curve = {8: 88.0, 12: 89.0, 16: 91.0, 20: 91.5}
    assert sim.labels_to_reach(curve, 90.0) == pytest.approx(14.0)
    assert sim.labels_to_reach(curve, 87.0) == 8.0
    assert sim.labels_to_reach(curve, 92.0) is None


def test_report_prints_the_tables_from_the_results_file(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "results.csv"
    # random ends at 90.0 (mean of 89, 90, 91 at 24 labels); disagreement reaches it at 16 labels.
    curves = {("random", 0): [88, 88.5, 88.7, 88.9, 89], ("random", 1): [88, 88.8, 89.2, 89.6, 90],
              ("random", 2): [88, 89.1, 89.9, 90.5, 91], ("disagreement", 0): [88, 89, 90, 90.5, 91],
              ("disagreement-supervised", 0): [88, 88.5, 89, 89.5, 90]}
    for (arm, seed), values in curves.items():
        for rnd, dice in enumerate(values):
            per_case = f"{dice + 1:.2f} {dice - 1:.2f}" if arm == "disagreement" else f"{dice:.2f} {dice:.2f}"
            sim.append_row(path, cell(arm, seed, rnd, dice, effort=f"{20 - rnd} {20 - rnd}", case_dice=per_case))
    assert sim.report(tmp_path) == 0
    out = capsys.readouterr().out
    assert "| random (3 seeds) | 88.00 +- 0.00 | 88.80 +- 0.30 | 89.27 +- 0.60 | 89.67 +- 0.80 | 90.00 +- 1.00 |" \
        in out
    assert "| disagreement | 88.00 | 89.00 | 90.00 | 90.50 | 91.00 |" in out
    assert "random's final Dice (90.00 % at 24 labels" in out
    assert "| disagreement | 16.0 | 33 % |" in out
    assert "| random (mean) | 24.0 | 0 % |" in out
    assert "| random seed 2 alone | 16.7 | 31 % |" in out and "| random seed 0 alone | not reached | - |" in out
    # paired per-case differences: (d + 1) - d' and (d - 1) - d' at 12 labels: 89 -+ 1 - 88.5
    assert "12 labels: +0.50 +- 1.41 (1 of 2 cases better with it)" in out
    assert "| disagreement | 17.50 | 250 | 19.0, 18.0, 17.0, 16.0 |" in out
    assert "25 cells; CPU time 0.35 h" in out
    assert (tmp_path / "learning_curve.png").stat().st_size > 10_000
    # The same tables in report.md, and in a README between the block's lines (and nowhere else).
    written = (tmp_path / "report.md").read_text()
    assert "| disagreement | 16.0 | 33 % |" in written and "- 12 labels: +0.50 +- 1.41" in written
    head, tail = sim.README_BLOCK
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n\n{head}\n\nold table\n\n{tail}\n\nafter\n")
    assert sim.report(tmp_path, readme) == 0
    text = readme.read_text()
    assert "old table" not in text and written in text
    assert text.startswith("# Title\n\nbefore\n\n" + head) and text.endswith(tail + "\n\nafter\n")
    assert sim.report(tmp_path, readme) == 0 and readme.read_text() == text  # a second run changes nothing


@pytest.mark.slow
def test_a_tiny_run_stops_and_continues_without_redoing_a_cell(la_root, tmp_path):
    """Two random arms, one round of one pick from a pool of 2, one measure case, 1 iteration:
    stopped after 3 cells (--max-cells), then continued."""
    args = [sys.executable, str(REPO / "benchmarks" / "al_simulation_la.py"), "--results", str(tmp_path / "out"),
            "--work", str(tmp_path / "work"), "--arms", "random", "--random-seeds", "0,1", "--rounds", "1",
            "--per-round", "1", "--pool", "2", "--measure", "1", "--iterations", "1"]
    first = subprocess.run(args + ["--max-cells", "3"], capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr
    assert "stopping after 3 cell(s)" in first.stdout
    with open(tmp_path / "out" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["arm"], r["seed"], r["round"]) for r in rows] == [("random", "0", "0"), ("random", "1", "0"),
                                                                 ("random", "0", "1")]
    assert rows[2]["labels"] == "9" and len(rows[2]["picked"].split()) == 1 and float(rows[2]["effort_pct"]) > 0
    second = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("\ncell ") == 1 and "cell random seed 1 round 1" in second.stdout
    with open(tmp_path / "out" / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    changed = subprocess.run(args[:-1] + ["2"], capture_output=True, text=True, timeout=300)
    assert changed.returncode == 1 and "another protocol (iterations: 1 -> 2)" in changed.stderr

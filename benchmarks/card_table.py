"""Model-card tables from `caml evaluate` runs: the summary row of each run and per-case Dice side by side.

    python benchmarks/card_table.py "v3, NRRD path=eval/v3-nrrd/metrics.json" "v3, .h5 path=eval/v3-h5/metrics.json" ...

Each argument is ``LABEL=METRICS_JSON`` (the ``metrics.json`` that
``caml evaluate --out DIR`` writes). Prints two Markdown tables: mean ± std of
Dice and Jaccard (%), 95HD and ASD (voxels and mm) per run, then the Dice of
every case (rows) for every run (columns), with the lowest case of each run
marked. The runs must score the same cases.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Tuple

COLUMNS = (("dice", "Dice", 100.0), ("jaccard", "Jaccard", 100.0), ("hd95_voxels", "95HD (vox)", 1.0),
           ("asd_voxels", "ASD (vox)", 1.0), ("hd95_mm", "95HD (mm)", 1.0), ("asd_mm", "ASD (mm)", 1.0))


def read_runs(specs: List[str]) -> List[Tuple[str, Dict]]:
    runs = []
    for spec in specs:
        label, sep, path = spec.rpartition("=")
        if not sep or not label:
            raise SystemExit(f"expected LABEL=METRICS_JSON, got {spec!r}")
        runs.append((label, json.loads(Path(path).read_text())))
    cases = [sorted(r["case"] for r in data["cases"]) for _, data in runs]
    if any(c != cases[0] for c in cases):
        raise SystemExit("the runs do not score the same cases")
    return runs


def summary_table(runs: List[Tuple[str, Dict]]) -> str:
    lines = ["| run | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for label, data in runs:
        cells = []
        for key, _, scale in COLUMNS:
            stat = data["summary"][key]
            cells.append(f"{stat['mean'] * scale:.2f} ± {stat['std'] * scale:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_case_table(runs: List[Tuple[str, Dict]]) -> str:
    dice = [{r["case"]: 100.0 * r["dice"] for r in data["cases"]} for _, data in runs]
    lowest = [min(d, key=d.get) for d in dice]
    lines = ["| case | " + " | ".join(label for label, _ in runs) + " |", "|---|" + "---|" * len(runs)]
    for case in sorted(dice[0]):
        cells = [f"**{d[case]:.2f}**" if case == low else f"{d[case]:.2f}" for d, low in zip(dice, lowest)]
        lines.append(f"| `{case}` | " + " | ".join(cells) + " |")
    below = [sum(v < 75.0 for v in d.values()) for d in dice]
    lines.append("| cases below 75 | " + " | ".join(str(b) for b in below) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=METRICS_JSON")
    runs = read_runs(parser.parse_args().runs)
    print(summary_table(runs))
    print()
    print("Per case Dice (%), the lowest of each run in bold:")
    print()
    print(per_case_table(runs))


if __name__ == "__main__":
    main()

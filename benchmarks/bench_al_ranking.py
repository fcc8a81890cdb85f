"""Seconds per case of active-learning ranking: the old scoring against the new, in one run (#22 item 5).

    python benchmarks/bench_al_ranking.py [--model caml-la-cpu8] [--cases 4] [--threads 1]

On the first ``--cases`` cases of the pool of the LA simulation (cases 9.. of ``train.list``),
with a bundled model's weights, for each case and in this order:

* ``before``: what ``strategies.predict_case`` did until #22: the default protocol (dense
  windows, test-time flips) for model V, then the same again with model A in V's place;
* ``after``: what ``strategies.score_candidates`` runs now: the fast protocol
  (``strategies.SCORING_PROTOCOL``) with V and A in one pass (each window through both);
* ``proposal``: the default protocol for model V alone, what ``next_case`` still runs once,
  for the chosen case only.

Prints the seconds of each per case and on average, the speed-up of ``after`` over
``before``, both scores (disagreement, entropy) of both ways, and how well the two rankings
agree (Spearman's rank correlation over the cases, and whether the top pick is the same);
the last line is the whole result as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "CAMLSegmentation"))
sys.path.insert(0, str(REPO / "benchmarks"))

from la_bench import LA_ROOT, la_case_path  # noqa: E402

#: The simulation's pool starts after the 8 labeled cases of caml-la-cpu8.
POOL_START = 8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="caml-la-cpu8", help="catalog model id (default caml-la-cpu8)")
    parser.add_argument("--cases", type=int, default=4, help="how many pool cases to time (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    if not (LA_ROOT / "train.list").is_file():
        raise SystemExit(f"needs the LA data in {LA_ROOT}")

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from CAMLSegmentationLib.activelearning import strategies
    from CAMLSegmentationLib.inference.predictor import InferenceOptions, segment_volume
    from CAMLSegmentationLib.io.volume import read_la_h5
    from CAMLSegmentationLib.model.catalog import find_model, verify

    weights = verify(find_model(args.model))
    model = strategies.load_dual_model(weights, "cpu")
    a_as_v = dataclasses.replace(model, networks={"v": model.networks["a"]})
    ids = (LA_ROOT / "train.list").read_text().split()[POOL_START:POOL_START + args.cases]
    rows = []
    print(f"model {args.model}, {args.threads} thread(s), {len(ids)} LA pool cases")
    print(f"{'case':<22} {'before s':>8} {'after s':>8} {'proposal s':>10}  disagreement before/after  "
          "entropy before/after")
    for case in ids:
        volume, _ = read_la_h5(la_case_path(case))
        start = time.perf_counter()
        p_v = segment_volume(volume, model, InferenceOptions()).probability
        p_a = segment_volume(volume, a_as_v, InferenceOptions()).probability
        before = time.perf_counter() - start
        old = strategies.model_scores(p_v, p_a)
        start = time.perf_counter()
        _, q_v, q_a, _ = strategies.predict_case(model, volume, protocol=strategies.SCORING_PROTOCOL)
        after = time.perf_counter() - start
        new = strategies.model_scores(q_v, q_a)
        start = time.perf_counter()
        segment_volume(volume, model, InferenceOptions.for_protocol(strategies.PROPOSAL_PROTOCOL))
        proposal = time.perf_counter() - start
        rows.append({"case": case, "shape": list(volume.shape), "before_s": round(before, 2),
                     "after_s": round(after, 2), "proposal_s": round(proposal, 2), "scores_before": old,
                     "scores_after": new})
        print(f"{case:<22} {before:>8.2f} {after:>8.2f} {proposal:>10.2f}  {old['disagreement']:.4f} / "
              f"{new['disagreement']:.4f}           {old['entropy']:.4f} / {new['entropy']:.4f}", flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("before_s", "after_s", "proposal_s")}
    print(f"{'mean':<22} {mean['before_s']:>8.2f} {mean['after_s']:>8.2f} {mean['proposal_s']:>10.2f}")
    print(f"ranking speed-up: {mean['before_s'] / mean['after_s']:.1f}x per case; a 56-case pool: "
          f"{56 * mean['before_s']:.0f} s before, {56 * mean['after_s']:.0f} s after "
          f"(+ {mean['proposal_s']:.1f} s for the chosen case's proposal)")
    agreement = {}
    for name in ("disagreement", "entropy"):
        old_order = sorted(rows, key=lambda r: -r["scores_before"][name])
        new_order = sorted(rows, key=lambda r: -r["scores_after"][name])
        rank_old = np.argsort(np.argsort([-r["scores_before"][name] for r in rows]))
        rank_new = np.argsort(np.argsort([-r["scores_after"][name] for r in rows]))
        spearman = float(np.corrcoef(rank_old, rank_new)[0, 1]) if len(rows) > 2 else float("nan")
        agreement[name] = {"spearman": spearman, "same_top_pick": old_order[0]["case"] == new_order[0]["case"]}
        print(f"{name}: Spearman rank correlation before/after {spearman:.2f} over {len(rows)} cases; "
              f"same top pick: {agreement[name]['same_top_pick']}")
    print(json.dumps({"model": args.model, "threads": args.threads, "cases": rows, "mean": mean,
                      "ranking_agreement": agreement}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

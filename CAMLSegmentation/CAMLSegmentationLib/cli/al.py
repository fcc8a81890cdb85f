"""``caml al``: the active-learning loop from the command line.

    caml al init COHORT [--model ID|FILE|none] [--val-every N] [--auto-retrain N] [--preset P]
    caml al status COHORT
    caml al next COHORT [--strategy S] [--uncertainty]
    caml al accept COHORT CASE LABEL [--role auto|train|val] [--retrain-when-due]
    caml al retrain COHORT [--iterations N] [--promote auto|always|never] [--supervised-only] [--resume | --cancel]
    caml al versions COHORT [--rescore]
    caml al use COHORT VERSION

Every sub-command takes ``--json`` (one JSON object on stdout) and the long ones
``--progress bar|json|none``; with ``--progress json`` stdout carries the
JSON-lines protocol the Slicer panel reads, ending in a ``done`` or ``error`` line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

from ..activelearning.case_ids import SEED_RANGE
from ..activelearning.cohort import DEFAULT_PRESET, DEFAULT_VAL_EVERY, MIN_VALIDATION, PROMOTION_MARGIN, ROLES
from ..activelearning.retrain import PROMOTE_CHOICES
from ..activelearning.strategies import STRATEGIES
from ..activelearning.versions import MAX_VERSION
from .common import add_progress_argument


def _int_in(low: int, high: int, what: str) -> Any:
    """An argparse type: an integer from ``low`` to ``high`` (a usage error otherwise, not a traceback)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number, not {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be {low} to {high}, not {text}")
        return value
    parse.__name__ = what
    return parse


_SEED = _int_in(*SEED_RANGE, "seed")
#: ``caml al init --model none``: a cohort without a first version.
NO_MODEL = "none"
#: What ``--promote auto`` does, for --help and the README (the rule is ``retrain.compare_on_validation``).
PROMOTION_RULE = (f"the first version is promoted; after that the new version is compared with the current one "
                  f"case by case on the validation cases: with fewer than {MIN_VALIDATION} it is kept, not "
                  f"promoted; it is promoted when it is better on more cases than it is worse and its mean "
                  f"Dice gain is at least {PROMOTION_MARGIN} (a tie keeps the current version)")
_COUNT = _int_in(0, 10 ** 6, "count")


def add_parser(subparsers: Any) -> None:
    al = subparsers.add_parser(
        "al", help="active learning on a cohort folder: pick a case, correct it, accept it, retrain",
        description="Active learning on a cohort: a folder with images/<id>.<ext> (the generic layout of caml "
                    "train). Its state lives in <cohort>/caml-al/state.sqlite; accepted labels are written to "
                    "labels/<id>.nrrd.")
    sub = al.add_subparsers(dest="al_command", metavar="ACTION")
    sub.required = True

    def common(p: argparse.ArgumentParser, progress: bool = False, device: bool = False) -> None:
        p.add_argument("cohort", type=Path, help="the cohort folder (holding images/)")
        p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
        if device:
            p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:K")
        if progress:
            add_progress_argument(p, help="progress as a text bar on stderr, JSON lines on stdout (ending in a "
                                          "'done' or 'error' line), or nothing")

    p = sub.add_parser("init", help="make a folder of images a cohort (creates caml-al/state.sqlite)")
    common(p)
    p.add_argument("--model", metavar="ID|FILE|none",
                   help="version 1: a catalog model id or a checkpoint file (default: the catalog's default "
                        f"model, caml models shows it); '{NO_MODEL}': start without a model (the first "
                        "retrain trains one from the preset)")
    p.add_argument("--val-every", type=_COUNT, default=DEFAULT_VAL_EVERY, metavar="N",
                   help=f"every N-th accepted case goes to validation, for good (default {DEFAULT_VAL_EVERY}; "
                        "0: only with --role val)")
    p.add_argument("--auto-retrain", type=_COUNT, default=0, metavar="N",
                   help="retrain after every N cases accepted for training (default 0: only when asked)")
    p.add_argument("--preset", default=DEFAULT_PRESET, metavar="NAME|FILE",
                   help=f"training preset of retrains (default {DEFAULT_PRESET}: a short warm-started fine-tuning)")
    p.add_argument("--seed", type=_SEED, default=0,
                   help=f"seed of the random strategy and of retraining, 0 to {SEED_RANGE[1]} (default 0)")
    p.set_defaults(func=run_init)

    p = sub.add_parser("status", help="case counts, current version, correction effort of the accepted cases, "
                                      "notes and problems")
    common(p)
    p.set_defaults(func=run_status)

    p = sub.add_parser("next", help="pick the next case to label and write its prediction")
    common(p, progress=True, device=True)
    p.add_argument("--strategy", choices=STRATEGIES, default=STRATEGIES[0],
                   help="disagreement (CAML's models V and A disagree most), entropy (model V least sure), "
                        "random, or first (cohort order) (default disagreement)")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write the |p_V - p_A| map of the chosen case (an overlay)")
    p.set_defaults(func=run_next)

    p = sub.add_parser("accept", help="store a corrected label for a case and accept it")
    common(p, progress=True, device=True)
    p.add_argument("case", help="the case id (file name in images/ without extension)")
    p.add_argument("label", type=Path, help="the label file: a binary mask on the case image's grid "
                                            "(.nrrd, .seg.nrrd, .nii.gz, ...)")
    p.add_argument("--force", action="store_true",
                   help="accept an empty or all-foreground label (refused otherwise, as it is most likely a mistake)")
    p.add_argument("--role", choices=ROLES, default=ROLES[0],
                   help="auto: every --val-every-th accepted case goes to validation; train or val: choose "
                        "(a case keeps its role for good) (default auto)")
    p.add_argument("--retrain-when-due", action="store_true",
                   help="when --auto-retrain N is set and N cases were accepted since the current version, "
                        "retrain right after accepting")
    p.set_defaults(func=run_accept)

    p = sub.add_parser("retrain", help="fine-tune CAML on the accepted cases, compare, promote if better",
                       description="Fine-tune CAML from the current version on the accepted training cases "
                                   "(every other image unlabeled); the new version keeps the current version's "
                                   "inference settings and post-processing. Promotion (--promote auto): "
                                   + PROMOTION_RULE + ". A promoted version is listed in the user model "
                                   "catalog under the cohort's name (caml models, caml segment --model).")
    common(p, progress=True, device=True)
    p.add_argument("--iterations", type=_int_in(1, 10 ** 9, "iterations"), metavar="N",
                   help="override the preset's number of iterations")
    p.add_argument("--preset", metavar="NAME|FILE", help="training preset (default: the cohort's)")
    p.add_argument("--promote", choices=PROMOTE_CHOICES, default=PROMOTE_CHOICES[0],
                   help="auto: the new version becomes current when the per-case comparison on the "
                        f"validation cases says so ({MIN_VALIDATION} cases at least, more wins than losses, mean "
                        f"gain >= {PROMOTION_MARGIN}); always / never: override (default auto)")
    p.add_argument("--seed", type=_SEED, help="training seed (default: the cohort's)")
    p.add_argument("--supervised-only", action="store_true",
                   help="train on the accepted cases alone: no unlabeled stream, no consistency or OCC loss "
                        "(a baseline; --resume keeps what the job started with)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--resume", action="store_true",
                      help="continue the last interrupted, cancelled or failed retrain from its checkpoint")
    what.add_argument("--cancel", action="store_true",
                      help="stop the cohort's running retrain (it keeps a resumable checkpoint)")
    p.set_defaults(func=run_retrain)

    p = sub.add_parser("versions", help="the model versions with their validation Dice and the per-case "
                                        "comparison that decided each promotion")
    common(p, progress=True, device=True)
    p.add_argument("--rescore", action="store_true",
                   help="score every version on the current validation set (cached; only new pairs are computed)")
    p.set_defaults(func=run_versions)

    p = sub.add_parser("use", help="make a version current (roll back, or promote a candidate); the user "
                                   "model catalog follows")
    common(p)
    p.add_argument("version", type=_int_in(1, MAX_VERSION, "version"), help="the version number (see caml al versions)")
    p.set_defaults(func=run_use)


def _progress(args: argparse.Namespace) -> Any:
    from .common import progress_callback

    return progress_callback(getattr(args, "progress", "none"))


#: Exit status when the reader of stdout went away (``caml al status | head -1``): 128 + SIGPIPE, as a shell
#: reports a standard tool that the closed pipe stopped.
EXIT_BROKEN_PIPE = 141


def _emit(args: argparse.Namespace, result: Dict[str, Any], text: str) -> int:
    try:
        if getattr(args, "progress", None) == "json":
            from ..progress import emit_final

            emit_final(dict({"event": "done"}, outputs=result))  # the one final event of the job
        else:
            print(json.dumps(result, default=str, indent=2) if args.json else text)
        sys.stdout.flush()
    except BrokenPipeError:
        # As standard tools: stop quietly. Point stdout at nothing so that the interpreter's own
        # flush at exit does not raise again.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return 0


def _json_errors(args: argparse.Namespace, func: Any) -> int:
    """Run a command's work. A read-only folder, a full or failing disk become one line naming
    the cohort; other errors and cancels propagate to ``cli.main``, which ends a
    ``--progress json`` stdout with exactly one ``error`` or ``cancelled`` event."""
    import sqlite3

    from ..activelearning import storage
    from ..activelearning.cohort import CohortError

    try:
        return func()
    except (OSError, sqlite3.Error, RuntimeError) as exc:
        if isinstance(exc, CohortError):
            raise
        message = storage.describe(exc, Path(args.cohort))
        if message is None:
            raise
        raise CohortError(message) from None


def run_init(args: argparse.Namespace) -> int:
    from ..activelearning.cohort import Cohort, CohortError
    from ..model.catalog import CatalogError, default_model, find_model, verify

    model, started = None, "no model (--model none): the first retrain trains one"
    if args.model is None:
        try:
            entry = default_model()
            model = verify(entry) if entry is not None else None
        except CatalogError as exc:
            raise CohortError(f"the default model cannot be used ({exc}); name one with --model, or --model "
                              f"{NO_MODEL}") from exc
        if entry is None:
            raise CohortError(f"the model catalog is empty: name weights with --model FILE, or --model {NO_MODEL}")
        started = f"version 1 is the default model {entry.id} (version {entry.version}, {entry.source})"
    elif args.model != NO_MODEL:
        candidate = Path(args.model)
        if candidate.is_file():
            model, started = candidate, f"version 1 is {candidate}"
        else:
            try:
                entry = find_model(args.model)
                model = verify(entry)
            except CatalogError as exc:
                raise CohortError(f"--model {args.model}: not a file, and {exc}") from exc
            started = f"version 1 is model {entry.id} (version {entry.version}, {entry.source})"
    from ..training.presets import load_preset

    load_preset(args.preset)  # a typo fails now, not at the first retrain

    def work() -> int:
        with Cohort.init(args.cohort, val_every=args.val_every, auto_retrain=args.auto_retrain,
                         preset=args.preset, seed=args.seed, model=model) as cohort:
            status = cohort.status()
        status["started_from"] = started
        return _emit(args, status, f"cohort {status['cohort']}: {status['cases']} cases; {started}")

    return _json_errors(args, work)


def format_status(status: Dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {k}" for k, n in status["counts"].items())
    lines = [f"cohort {status['cohort']}: {status['cases']} cases ({counts})",
             f"current version: {status['current_version'] or 'none'} of {status['versions']}; "
             f"validation: every {status['val_every'] or 'no'} accepted case(s); auto-retrain: "
             f"{status['auto_retrain'] or 'off'}; preset {status['preset']}"]
    if status.get("running_job"):
        lines.append(f"retrain job {status['running_job']} is running")
    catalog = status.get("catalog")
    if catalog and catalog.get("id"):
        lines.append(f"model catalog: version {catalog['version']} is model {catalog['id']} "
                     f"(caml segment --model {catalog['id']})")
    lines += format_corrections(status.get("correction") or [])
    lines += [f"note: {n}" for n in status["notes"]]
    lines += [f"problem: {p}" for p in status["problems"]]
    return "\n".join(lines)


#: How many of the latest accepted cases ``caml al status`` lists, and compares with the ones before.
RECENT_ACCEPTS = 5


def format_corrections(rows: Any) -> list:
    """The correction effort of the latest accepted cases, and its trend (the latest against the ones before)."""
    if not rows:
        return []

    def shown(r: Dict[str, Any]) -> str:
        if r["dice"] is None:
            effort = "no proposal to compare" if r["proposal_version"] is None else "proposal file unreadable"
        else:
            effort = (f"proposal of version {r['proposal_version']}: Dice {r['dice']:.3f}, "
                      f"{r['voxels_changed']} voxels changed")
        seconds = "" if r["seconds"] is None else f", {r['seconds']:.0f} s from next to accept"
        return f"  #{r['accept_order']} {r['case']}: {effort}{seconds}"

    lines = [f"correction effort (latest {min(len(rows), RECENT_ACCEPTS)} of {len(rows)} accepted cases):"]
    lines += [shown(r) for r in rows[-RECENT_ACCEPTS:]]
    measured = [r["dice"] for r in rows if r["dice"] is not None]
    if len(measured) > RECENT_ACCEPTS:
        latest, before = measured[-RECENT_ACCEPTS:], measured[-2 * RECENT_ACCEPTS:-RECENT_ACCEPTS]
        now, then = sum(latest) / len(latest), sum(before) / len(before)
        way = "less to correct" if now > then else "more to correct" if now < then else "unchanged"
        lines.append(f"  trend: mean proposal Dice {now:.3f} over the latest {len(latest)}, {then:.3f} over the "
                     f"{len(before)} before ({way})")
    return lines


def run_status(args: argparse.Namespace) -> int:
    from ..activelearning.cohort import Cohort

    def work() -> int:
        from ..activelearning.publish import catalog_state

        with Cohort.open(args.cohort, read_only=True) as cohort:
            status = cohort.status()
            status["catalog"] = catalog_state(cohort)
        if status["catalog"] and status["catalog"]["note"]:
            status["notes"].append(status["catalog"]["note"])
        return _emit(args, status, format_status(status))

    return _json_errors(args, work)


def run_next(args: argparse.Namespace) -> int:
    from ..activelearning.cohort import Cohort
    from ..activelearning.strategies import next_case

    def work() -> int:
        with Cohort.open(args.cohort) as cohort:
            result = next_case(cohort, args.strategy, args.device, args.uncertainty, progress=_progress(args))
        text = (f"next case: {result['case']} ({args.strategy} score {result['score']:.4g}); image {result['image']}"
                + (f"; prediction {result['prediction']}" if result["prediction"] else "; no model yet"))
        return _emit(args, result, text)

    return _json_errors(args, work)


def run_accept(args: argparse.Namespace) -> int:
    from ..activelearning.cohort import Cohort, CohortError
    from ..io.volume import read_image

    def work() -> int:
        if not args.label.exists():
            raise CohortError(f"{args.label}: no such label file")
        label = read_image(args.label)
        with Cohort.open(args.cohort) as cohort:
            result = cohort.accept(args.case, label, role=args.role, force=args.force,
                                   final=not args.retrain_when_due)
        text = f"accepted {result['case']} as {result['status']}; label {result['label']}"
        if args.retrain_when_due and not result["retrain_due"]:
            from ..progress import commit_job

            commit_job()  # nothing follows the accept: it is the outcome
        if result["retrain_due"]:
            if args.retrain_when_due:
                from ..activelearning.retrain import retrain

                result["retrain"] = retrain(args.cohort, device=args.device, progress=_progress(args))
                text += f"\nretrained: {result['retrain']['reason']}"
            else:
                text += "\nretrain due: run caml al retrain"
        return _emit(args, result, text)

    return _json_errors(args, work)


def run_retrain(args: argparse.Namespace) -> int:
    from ..activelearning.retrain import cancel_running, retrain
    from ..progress import terminate_as_cancel

    if args.cancel:
        return _json_errors(args, lambda: (lambda r: _emit(args, r, r["message"]))(cancel_running(args.cohort)))

    def work() -> int:
        # SIGTERM (Cancel in the panel, or --cancel) stops like Ctrl-C: the job keeps a resumable checkpoint.
        with terminate_as_cancel():
            result = retrain(args.cohort, iterations=args.iterations, preset=args.preset, device=args.device,
                             promote=args.promote, resume=args.resume, seed=args.seed, progress=_progress(args),
                             supervised_only=args.supervised_only)
        return _emit(args, result, f"version {result['version']}: {result['reason']}" + _catalog_line(result["catalog"])
                     + "".join(f"\n{line}" for line in format_comparison(result["comparison"])))

    return _json_errors(args, work)


def format_versions(versions: Any, current_scores: Dict[int, Any]) -> str:
    lines = [f"{'':2}{'version':>7}  {'created':<19}  {'parent':>6}  {'train':>5}  {'val Dice':>8}  "
             f"{'on current val':>14}  note"]
    for v in versions:
        dice = "-" if v["val_dice"] is None else f"{v['val_dice']:.4f}"
        now = current_scores.get(v["id"])
        now_text = "-" if now is None else f"{now:.4f}"
        lines.append(f"{'*' if v['current'] else ' ':2}{v['id']:>7}  {v['created_at'][:19]:<19}  "
                     f"{v['parent'] if v['parent'] is not None else '-':>6}  {len(v['train_cases']):>5}  "
                     f"{dice:>8}  {now_text:>14}  {v['note']}")
        lines += [f"{'':11}{line}" for line in format_comparison(v.get("comparison"))]
    return "\n".join(lines)


def format_comparison(comparison: Any) -> List[str]:
    """The per-case evidence of a promotion decision: Dice of both versions and the difference per case."""
    if not comparison or not comparison["cases"]:
        return []
    lines = [f"vs version {comparison['base_version']}: {comparison['wins']} better, {comparison['losses']} worse, "
             f"{comparison['ties']} equal; mean gain {comparison['mean_gain']:+.4f} (margin {comparison['margin']})"]
    lines += [f"  {r['case']}: {r['current']:.4f} -> {r['candidate']:.4f} ({r['difference']:+.4f})"
              for r in comparison["cases"]]
    return lines


def _catalog_line(published: Any) -> str:
    if not published:
        return ""
    if "error" in published:
        return f"\nwarning: {published['error']}"
    return f"\nmodel catalog: version {published['version']} is model {published['id']} " \
           f"(caml segment --model {published['id']})"


def run_versions(args: argparse.Namespace) -> int:
    from ..activelearning.cohort import Cohort
    from ..activelearning.retrain import version_table

    def work() -> int:
        with Cohort.open(args.cohort, read_only=not args.rescore) as cohort:
            versions, scores = version_table(cohort, args.rescore, args.device, _progress(args))
        return _emit(args, {"versions": versions}, format_versions(versions, scores))

    return _json_errors(args, work)


def run_use(args: argparse.Namespace) -> int:

    def work() -> int:
        from ..activelearning.publish import use_version

        version = use_version(args.cohort, args.version)
        return _emit(args, version, f"version {version['id']} is now current" + _catalog_line(version["catalog"]))

    return _json_errors(args, work)


if __name__ == "__main__":  # pragma: no cover
    from . import main

    sys.exit(main(["al", *sys.argv[1:]]))

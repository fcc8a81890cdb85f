"""``caml models``: list the model catalog, check weights, register a model trained here."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("models", help="list, verify or register trained models",
                              description="List the model catalog (bundled and user models).")
    p.add_argument("--json", action="store_true", help="print the catalog as JSON")
    p.set_defaults(func=list_models)
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    v = sub.add_parser("verify", help="check that each model's weights exist and match their SHA-256")
    v.add_argument("ids", nargs="*", metavar="ID", help="models to check (default: all)")
    v.set_defaults(func=verify_models)
    r = sub.add_parser("register", help="add a trained checkpoint to the user catalog ($CAML_HOME or ~/.caml)")
    r.add_argument("weights", metavar="FILE", help="checkpoint written by `caml train` (e.g. best.pt)")
    r.add_argument("--id", required=True, help="model id to use with --model")
    r.add_argument("--version", default="1")
    r.add_argument("--description", default="", help="one line for people (what, how trained, on what)")
    r.add_argument("--title", default="",
                   help="a few words people choose the model by, shown in the Slicer panel's Model list")
    r.add_argument("--training-data", default="", help="what it was trained on, for the record")
    r.add_argument("--training", default="", help="how, how long and on what machine it was trained")
    r.add_argument("--metrics", metavar="METRICS_JSON",
                   help="record the scores of a `caml evaluate` run (its metrics.json) in the catalog")
    r.add_argument("--fp16", action="store_true",
                   help="store the weights as float16 (half the file; check the scores with `caml evaluate`)")
    r.add_argument("--catalog", metavar="MODELS_JSON",
                   help="catalog to add it to (default: the user catalog; Resources/Models/models.json "
                        "bundles it with the extension)")
    r.add_argument("--default", action="store_true", help="use it when no --model is given")
    r.add_argument("--lcc", action=argparse.BooleanOptionalAction, default=None,
                   help="store 'keep only the largest connected component' as the model's post-processing "
                        "(--no-lcc: keep every component); default: what the checkpoint records (caml train "
                        "chooses it on the validation cases); for older checkpoints compare `caml evaluate "
                        "--lcc` and `--no-lcc` on the validation cases")
    r.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None,
                   help="also store ONNX exports of V and A, so ONNX Runtime segments without PyTorch "
                        "(default: when the onnx package is installed)")
    r.set_defaults(func=register)


def list_models(args: argparse.Namespace) -> int:
    from ..model.catalog import bundled_catalog_path, load_catalog, user_catalog_path

    entries = load_catalog()
    if getattr(args, "json", False):
        print(json.dumps([dict(e.to_json(), source=e.source, path=str(e.path)) for e in entries], indent=2))
        return 0
    if not entries:
        print(f"No models in the catalog yet ({bundled_catalog_path()}, {user_catalog_path()}).\n"
              f"Train one with `caml train`, then `caml models register best.pt --id NAME`, "
              f"or segment with --weights FILE.")
        return 0
    print(f"{'id':<20} {'version':<8} {'preset':<8} {'dice':>6}  {'source':<8} description")
    for e in entries:
        mark = " (default)" if e.default else ""
        score = f"{e.metrics['dice']:6.2f}" if isinstance(e.metrics.get("dice"), (int, float)) else f"{'-':>6}"
        print(f"{e.id:<20} {e.version:<8} {e.preset or '-':<8} {score}  {e.source:<8} {e.description}{mark}")
    return 0


def verify_models(args: argparse.Namespace) -> int:
    from ..model.catalog import CatalogError, find_model, load_catalog, verify, verify_onnx

    entries = load_catalog()
    chosen = [find_model(i, entries) for i in args.ids] if args.ids else entries
    failed = 0
    for entry in chosen:
        try:
            path = verify(entry)
            exports = verify_onnx(entry, tuple(entry.onnx)) if entry.onnx else {}
            print(f"ok      {entry.id}: {path}" + "".join(f", {p.name}" for p in exports.values()))
        except CatalogError as exc:
            failed += 1
            print(f"FAILED  {exc}")
    return 1 if failed else 0


def register(args: argparse.Namespace) -> int:
    from ..model.catalog import metrics_from_evaluation, register_model

    metrics = metrics_from_evaluation(args.metrics) if args.metrics else None
    entry = register_model(args.weights, args.id, version=args.version, description=args.description,
                           training_data=args.training_data, training=args.training, metrics=metrics,
                           catalog_path=args.catalog, default=args.default, half=args.fp16,
                           largest_component=args.lcc, onnx=args.onnx, title=args.title)
    print(f"registered {entry.id} (version {entry.version}, sha256 {entry.sha256[:12]}...) -> {entry.path}\n"
          f"  use it with `caml segment IN --model {entry.id}`")
    return 0

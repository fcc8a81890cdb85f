"""Active learning that closes the loop (#22): versions reach Segment through the user catalog,
candidates keep the base's inference record, the per-case promotion rule, init from the default
model, exact or refused resume, and the whole loop on real LA images.

Every test runs the real engine on real files; each test has its own ``$CAML_HOME`` (conftest).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
from CAMLSegmentationLib.activelearning import publish
from CAMLSegmentationLib.activelearning.cohort import MIN_VALIDATION, PROMOTION_MARGIN, Cohort
from CAMLSegmentationLib.activelearning.retrain import compare_on_validation
from CAMLSegmentationLib.cli import main as caml
from CAMLSegmentationLib.io.volume import read_image
from CAMLSegmentationLib.model.catalog import (
    caml_home,
    check_name,
    default_model,
    sha256_file,
    user_catalog_path,
)
from CAMLSegmentationLib.model.checkpoint import read_checkpoint, save_checkpoint
from CAMLSegmentationLib.model.settings import InferenceSettings
from test_active_learning import make_cohort, run_caml, save_model, tiny_preset, truth


def init(root: Path, tmp_path: Path, *extra: str) -> Path:
    preset = tiny_preset(tmp_path / "tiny.json")
    assert caml(["al", "init", str(root), "--preset", str(preset), *extra]) == 0
    return root


def with_settings(path: Path, **settings: Any) -> Path:
    """``path`` rewritten with an inference record (the others as ``InferenceSettings``' defaults)."""
    ckpt = read_checkpoint(path)
    ckpt["inference"] = InferenceSettings(window=(32, 32, 16), **settings).to_dict()
    save_checkpoint(path, {k: v for k, v in ckpt.items() if k not in ("format", "format_version")})
    return path


def two_versions(root: Path, tmp_path: Path) -> None:
    """Version 1 and version 2 (its child), added as a retrain would add them (no training)."""
    with Cohort.open(root) as cohort:
        cohort.add_version(save_model(tmp_path / "v1.pt", seed=1), None, None, None, 0, [], promote=True)
        job = cohort.start_job("retrain", 1)
        cohort.job_lock.release()
        cohort.add_version(save_model(tmp_path / "v2.pt", seed=2, fg_bias=1.0), 1, job["id"], 0.5, 0,
                           ["case0", "case1"], promote=False, note="kept for the test")


def user_entries() -> List[Dict[str, Any]]:
    return json.loads(user_catalog_path().read_text())["models"] if user_catalog_path().is_file() else []


def listed(capsys) -> Dict[str, Dict[str, Any]]:
    capsys.readouterr()
    assert caml(["models", "--json"]) == 0
    return {e["id"]: e for e in json.loads(capsys.readouterr().out)}


# --------------------------------------------------------------------------- item 1: versions reach Segment


def test_derived_ids_are_plain_catalog_names() -> None:
    cases = {"my cohort (copy)": "my-cohort-copy", "LA_2024.v2": "LA_2024.v2", "...": "cohort",
             "über..scans": "ber.scans", "-x-": "x", "a" * 80: "a" * publish.MAX_DERIVED_ID, "": "cohort"}
    for name, expected in cases.items():
        assert publish.derived_id(name) == expected, name
        check_name(publish.derived_id(name), "id")  # a name the catalog accepts
        check_name(publish.derived_id(name) + "-99", "id")  # and with a suffix


def test_use_publishes_the_current_version_and_the_catalog_follows_a_rollback(tmp_path: Path, capsys) -> None:
    root = init(make_cohort(tmp_path / "lung study", n=4), tmp_path, "--model", "none")
    two_versions(root, tmp_path)
    assert user_entries() == []  # nothing published before a version is promoted or used
    capsys.readouterr()
    assert caml(["al", "use", str(root), "2", "--json"]) == 0
    used = json.loads(capsys.readouterr().out)
    assert used["catalog"]["id"] == "lung-study" and used["catalog"]["version"] == "2"
    entry = listed(capsys)["lung-study"]
    assert entry["version"] == "2" and entry["source"] == "user"
    assert entry["origin"] == {"cohort": str(root.resolve()), "version": 2, "parent": 1, "job": 1}
    assert "active learning on cohort" in entry["description"] and "lung study" in entry["title"]
    # The listed file is version 2's weights (a release copy: same V and A, same inference record).
    with Cohort.open(root) as cohort:
        version2 = read_checkpoint(cohort.weights(2))
    stored = read_checkpoint(Path(entry["path"]))
    assert all(np.array_equal(stored["model"][k].numpy(), version2["model"][k].numpy()) for k in stored["model"])
    assert stored["inference"] == InferenceSettings.from_checkpoint(version2).to_dict()
    # It segments through caml segment --model, exactly as the cohort's version 2 does.
    image = root / "images" / "case3.nrrd"
    assert caml(["segment", str(image), str(tmp_path / "by-id.nrrd"), "--model", "lung-study",
                 "--backend", "torch", "--progress", "none"]) == 0
    assert caml(["segment", str(image), str(tmp_path / "by-file.nrrd"), "--weights",
                 str(root / "caml-al" / "versions" / "job-0001.pt"), "--progress", "none"]) == 0
    assert np.array_equal(read_image(tmp_path / "by-id.nrrd").array, read_image(tmp_path / "by-file.nrrd").array)
    # Roll back: the same id now lists version 1, and version 2's files are gone from the catalog folder.
    assert caml(["al", "use", str(root), "1"]) == 0
    assert "version 1 is model lung-study" in capsys.readouterr().out
    entry = listed(capsys)["lung-study"]
    assert entry["version"] == "1" and entry["origin"]["version"] == 1
    assert sorted(p.name for p in (caml_home() / "models").glob("lung-study@*")) == sorted(
        ["lung-study@1.pt"] + [f"lung-study@1.{w}.onnx" for w in ("v", "a") if w in entry.get("onnx", {})])
    assert caml(["al", "status", str(root)]) == 0
    assert "model catalog: version 1 is model lung-study" in capsys.readouterr().out


def test_two_cohorts_of_one_name_and_a_bundled_name_get_ids_of_their_own(tmp_path: Path, capsys) -> None:
    first = init(make_cohort(tmp_path / "a" / "cohort", n=3), tmp_path, "--model", "none")
    second = init(make_cohort(tmp_path / "b" / "cohort", n=3), tmp_path, "--model", "none")
    bundled_id = default_model().id
    clash = init(make_cohort(tmp_path / bundled_id, n=3), tmp_path, "--model", "none")
    for root in (first, second, clash):
        two_versions(root, tmp_path)
        assert caml(["al", "use", str(root), "2"]) == 0
    assert caml(["al", "use", str(first), "1"]) == 0  # the first keeps its id
    models = listed(capsys)
    origins = {e["origin"]["cohort"]: (i, e["version"]) for i, e in models.items() if e.get("origin")}
    assert origins == {str(first.resolve()): ("cohort", "1"), str(second.resolve()): ("cohort-2", "2"),
                       str(clash.resolve()): (f"{bundled_id}-2", "2")}
    assert models[bundled_id]["source"] == "bundled"  # untouched


def test_a_catalog_failure_never_undoes_the_cohort_change(tmp_path: Path, capsys) -> None:
    root = init(make_cohort(tmp_path / "cohort", n=3), tmp_path, "--model", "none")
    two_versions(root, tmp_path)
    user_catalog_path().parent.mkdir(parents=True)
    user_catalog_path().write_text("{ not json")  # a damaged user catalog
    capsys.readouterr()
    assert caml(["al", "use", str(root), "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["current"] and "not in the model catalog" in result["catalog"]["error"]
    with Cohort.open(root) as cohort:
        assert cohort.current_version() == 2
    assert caml(["al", "status", str(root)]) == 0
    assert "the user model catalog cannot be read" in capsys.readouterr().out
    user_catalog_path().unlink()  # repaired: use lists it again
    assert caml(["al", "use", str(root), "2"]) == 0
    assert user_entries()[0]["version"] == "2"


# --------------------------------------------------------------------------- item 3: the promotion rule


def test_promotion_rule_on_constructed_scores() -> None:
    base = {f"c{i}": 0.80 for i in range(4)}

    def decide(gains: List[float]) -> Dict[str, Any]:
        return compare_on_validation({f"c{i}": 0.80 + g for i, g in enumerate(gains)},
                                     {f"c{i}": base[f"c{i}"] for i in range(len(gains))}, 7)

    assert MIN_VALIDATION == 3 and PROMOTION_MARGIN == 0.005
    better = decide([0.02, 0.01, -0.005])
    assert better["promoted"] and (better["wins"], better["losses"]) == (2, 1)
    assert better["mean_gain"] == pytest.approx(0.025 / 3)
    assert [r["case"] for r in better["cases"]] == ["c0", "c1", "c2"]
    assert better["cases"][2]["difference"] == pytest.approx(-0.005) and "version 7" in better["reason"]
    tie = decide([0.0, 0.0, 0.0])
    assert not tie["promoted"] and tie["ties"] == 3  # a tie keeps the current version
    assert not decide([0.004, 0.004, 0.005])["promoted"]  # below the margin
    assert not decide([0.09, -0.01, -0.01])["promoted"]  # a large mean gain carried by one case
    few = decide([0.2, 0.2])
    assert not few["promoted"] and few["validation_needed"] == 1
    assert "2 validation case(s), 3 needed" in few["reason"] and "accept 1 more as validation" in few["reason"]


# --------------------------------------------------------------------------- item 4: init from the default model


def test_init_without_model_starts_from_the_default_model(tmp_path: Path, capsys) -> None:
    root = make_cohort(tmp_path / "cohort", n=3)
    capsys.readouterr()
    assert caml(["al", "init", str(root)]) == 0
    entry = default_model()
    assert f"version 1 is the default model {entry.id}" in capsys.readouterr().out
    with Cohort.open(root) as cohort:
        assert cohort.current_version() == 1 and sha256_file(cohort.weights(1)) == entry.sha256
    bare = make_cohort(tmp_path / "bare", n=3)
    assert caml(["al", "init", str(bare), "--model", "none", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["current_version"] is None and "--model none" in status["started_from"]


def test_init_with_an_empty_catalog_says_what_to_do(tmp_path: Path, capsys, no_bundled_models) -> None:
    root = make_cohort(tmp_path / "cohort", n=3)
    capsys.readouterr()
    assert caml(["al", "init", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--model none" in err
    assert not (root / "caml-al" / "state.sqlite").exists()


# --------------------------------------------------------------------------- item 2: the inference record carries over


@pytest.mark.slow
def test_candidate_keeps_the_base_inference_record_and_is_scored_under_it(tmp_path: Path, capsys) -> None:
    base = with_settings(save_model(tmp_path / "base.pt", seed=4), largest_component=True, threshold=0.6,
                         flip_axes=(0,))
    root = init(make_cohort(tmp_path / "cohort", n=6), tmp_path, "--model", str(base), "--val-every", "0")
    with Cohort.open(root) as cohort:
        for case, role in (("case0", "train"), ("case1", "train"), ("case2", "val")):
            cohort.accept(case, read_image(truth(root, case)), role=role)
    capsys.readouterr()
    assert caml(["al", "retrain", str(root), "--iterations", "2", "--device", "cpu", "--progress", "none",
                 "--json", "--promote", "never"]) == 0
    result = json.loads(capsys.readouterr().out)
    with Cohort.open(root) as cohort:
        candidate = read_checkpoint(cohort.weights(result["version"]))
    wanted = InferenceSettings.from_checkpoint(read_checkpoint(base))
    assert InferenceSettings.from_checkpoint(candidate) == wanted
    assert wanted.largest_component and wanted.threshold == 0.6 and wanted.flip_axes == (0,)
    # Scored as caml segment runs the version: its stored threshold, flips and largest component.
    from CAMLSegmentationLib.inference.metrics import dice
    from CAMLSegmentationLib.inference.predictor import InferenceOptions, load_inference_model, segment_volume

    with Cohort.open(root) as cohort:
        model = load_inference_model(cohort.weights(result["version"]), "cpu")
        run = segment_volume(cohort.read_image("case2"), model, InferenceOptions())
        assert run.info["lcc"] is True and run.info["threshold"] == 0.6 and run.info["flips"] == [[], [0]]
        assert result["candidate_dice"] == pytest.approx(dice(run.mask > 0, cohort.label("case2") > 0), abs=1e-9)


# --------------------------------------------------------------------------- item 6: resume


def test_train_resume_with_other_cases_is_refused_naming_them(tmp_path: Path, capsys) -> None:
    root = make_cohort(tmp_path / "data", n=5)
    (root / "labels").mkdir()
    for c in ("case0", "case1"):
        shutil.copyfile(truth(root, c), root / "labels" / f"{c}.nrrd")
    preset = tiny_preset(tmp_path / "p.json", iterations=2)
    args = ["train", "--data", str(root), "--labeled", "2", "--out", str(tmp_path / "run"), "--preset", str(preset),
            "--progress", "none", "--device", "cpu"]
    assert caml(args) == 0
    saved = (tmp_path / "run" / "last.pt").read_bytes()
    hidden = tmp_path / "case4.nrrd"
    shutil.move(root / "images" / "case4.nrrd", hidden)  # an unlabeled case removed
    shutil.copyfile(root / "images" / "case3.nrrd", root / "images" / "case9.nrrd")  # and one added
    capsys.readouterr()
    assert caml(args + ["--resume", "--iterations", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "unlabeled cases: removed case4; added case9" in err and "last.pt" in err
    assert (tmp_path / "run" / "last.pt").read_bytes() == saved  # nothing written
    os.unlink(root / "images" / "case9.nrrd")
    shutil.move(hidden, root / "images" / "case4.nrrd")  # as saved: the resume goes on
    assert caml(args + ["--resume", "--iterations", "4"]) == 0
    assert read_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 4


@pytest.mark.slow
def test_retrain_resume_with_an_unlabeled_image_gone_restarts_the_stream(tmp_path: Path, capsys) -> None:
    root = init(make_cohort(tmp_path / "cohort", n=6), tmp_path, "--model", "none", "--val-every", "0")
    with Cohort.open(root) as cohort:
        for case in ("case0", "case1"):
            cohort.accept(case, read_image(truth(root, case)), role="train")
    killed = run_caml("al", "retrain", str(root), "--iterations", "4", "--device", "cpu", "--progress", "none",
                      CAML_AL_KILL_AT="retrain-after-train")  # the job's training is complete, nothing committed
    assert killed.returncode != 0
    job_dir = root / "caml-al" / "jobs" / "job-0001"
    assert "case5" in (job_dir / "unlabeled.list").read_text().split()
    os.unlink(root / "images" / "case5.nrrd")
    done = run_caml("al", "retrain", str(root), "--resume", "--device", "cpu", "--progress", "json")
    assert done.returncode == 0, done.stderr[-2000:]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    warnings = [e["message"] for e in events if e.get("stage") == "warning"]
    assert any("case5" in w and "starts afresh" in w for w in warnings), warnings
    assert "case5" not in (job_dir / "unlabeled.list").read_text().split()
    assert events[-1]["event"] == "done" and events[-1]["outputs"]["version"] == 1


# --------------------------------------------------------------------------- the whole loop, on LA images


@pytest.mark.slow
def test_the_whole_loop_on_la_images(la_root: Path, tmp_path: Path, capsys) -> None:
    """init (the default model) -> next -> accept with the cases' labels -> retrain -> the candidate keeps
    the base's post-processing -> promoted only as the per-case comparison says -> listed by caml models
    and segmenting through caml segment --model -> use 1 rolls back and the catalog follows.

    Five LA cases (the bundled models' validation cases: none of them trained the default model), written as
    NRRD images by the engine's writers; 3 fine-tuning iterations on one thread."""
    from CAMLSegmentationLib.inference.metrics import dice
    from CAMLSegmentationLib.inference.predictor import InferenceOptions, load_inference_model, segment_volume
    from CAMLSegmentationLib.io.volume import write_image, write_mask
    from CAMLSegmentationLib.training.sources import open_source

    ids = (la_root / "train.list").read_text().split()[-5:]
    source = open_source(la_root)
    root, labels = tmp_path / "la-cohort", tmp_path / "labels"
    (root / "images").mkdir(parents=True)
    labels.mkdir()
    for case in ids:
        volume, label = source.read(case, with_label=True)
        write_image(volume.array, volume, root / "images" / f"{case}.nrrd")
        write_mask(label, volume, labels / f"{case}.nrrd")
    capsys.readouterr()
    assert caml(["al", "init", str(root), "--val-every", "0"]) == 0
    default = default_model()
    assert f"version 1 is the default model {default.id}" in capsys.readouterr().out

    accepted = []
    for role in ("val", "train", "val", "train", "val"):
        assert caml(["al", "next", str(root), "--json", "--device", "cpu", "--progress", "none"]) == 0
        chosen = json.loads(capsys.readouterr().out)
        assert chosen["case"] not in accepted and Path(chosen["prediction"]).is_file()  # the model's proposal
        assert caml(["al", "accept", str(root), chosen["case"], str(labels / f"{chosen['case']}.nrrd"),
                     "--role", role]) == 0
        accepted.append(chosen["case"])
        capsys.readouterr()
    capsys.readouterr()
    assert caml(["al", "retrain", str(root), "--iterations", "3", "--device", "cpu", "--progress", "none",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["version"] == 2 and result["base_version"] == 1

    with Cohort.open(root) as cohort:
        base, candidate = read_checkpoint(cohort.weights(1)), read_checkpoint(cohort.weights(2))
        validation = cohort.validation_ids()
        # The candidate runs as the base does: the default model's post-processing (largest component) included.
        assert InferenceSettings.from_checkpoint(candidate) == InferenceSettings.from_checkpoint(base)
        assert InferenceSettings.from_checkpoint(candidate).largest_component
        # The per-case evidence is the one predictor's: one case rescored independently, for both versions.
        case = validation[0]
        row = next(r for r in result["comparison"]["cases"] if r["case"] == case)
        for version, key in ((1, "current"), (2, "candidate")):
            run = segment_volume(cohort.read_image(case), load_inference_model(cohort.weights(version), "cpu"),
                                 InferenceOptions())
            assert row[key] == pytest.approx(dice(run.mask > 0, cohort.label(case) > 0), abs=1e-9)
    comparison = result["comparison"]
    assert sorted(r["case"] for r in comparison["cases"]) == sorted(validation) and len(validation) == 3
    gains = [r["candidate"] - r["current"] for r in comparison["cases"]]
    wins, losses = sum(g > 0 for g in gains), sum(g < 0 for g in gains)
    assert result["promoted"] == (wins > losses and np.mean(gains) >= PROMOTION_MARGIN)
    assert result["current_version"] == (2 if result["promoted"] else 1)
    if result["promoted"]:
        assert result["catalog"]["id"] == "la-cohort" and result["catalog"]["version"] == "2"
    else:  # kept: nothing is published; the user can still choose it, and the catalog follows
        assert result["catalog"] is None and user_entries() == []
        assert caml(["al", "use", str(root), "2"]) == 0

    entry = listed(capsys)["la-cohort"]
    assert entry["version"] == "2" and entry["origin"]["cohort"] == str(root.resolve())
    assert sorted(entry["metrics"]["per_case_dice"]) == sorted(validation)
    image = root / "images" / f"{accepted[-1]}.nrrd"

    def segmented(*how: str) -> np.ndarray:
        out = tmp_path / f"seg-{len(list(tmp_path.glob('seg-*')))}.nrrd"
        assert caml(["segment", str(image), str(out), *how, "--backend", "torch", "--progress", "none"]) == 0
        return read_image(out).array

    by_id = segmented("--model", "la-cohort")
    assert np.array_equal(by_id, segmented("--weights", str(root / "caml-al" / "versions" / "job-0001.pt")))
    # Roll back: the catalog entry is version 1 again, and segments as the default model it started from.
    assert caml(["al", "use", str(root), "1"]) == 0
    assert listed(capsys)["la-cohort"]["version"] == "1"
    assert np.array_equal(segmented("--model", "la-cohort"), segmented("--model", default.id))

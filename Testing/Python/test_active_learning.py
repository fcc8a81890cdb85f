"""Active learning on small generated cohorts: state, crash safety, concurrency, strategies, versions.

Every test runs the real engine: real SQLite files, real label files, real
``caml al`` processes (killed with SIGKILL at named points or mid-training),
real CAML training with a tiny preset (4 filters, 32x32x16 patches).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
import torch
from CAMLSegmentationLib.activelearning import strategies
from CAMLSegmentationLib.activelearning.cohort import (
    ACCEPTED_TRAIN,
    ACCEPTED_VAL,
    PREDICTED,
    UNLABELED,
    Cohort,
    CohortError,
    db_path,
)
from CAMLSegmentationLib.cli import main as caml
from CAMLSegmentationLib.io.volume import Volume, read_image, write_image, write_mask
from CAMLSegmentationLib.model.checkpoint import read_checkpoint, save_checkpoint
from CAMLSegmentationLib.model.network import CAMLNet, NetworkConfig
from synthetic import blob_case

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
ENGINE_PARENT = REPO / "CAMLSegmentation"
SHAPE = (32, 32, 16)
GEOMETRY = dict(spacing=(1.0, 1.0, 2.0), origin=(-10.0, 5.0, 3.0))

TINY_PRESET = dict(name="al-tiny", spacing=None, patch_size=[32, 32, 16], base_filters=4, feat_dim=8,
                   iterations=4, lr=0.05, memory_per_class=16, num_filtered=256, rampup_interval=1,
                   rampup_length=4, val_start=100000, val_interval=100000, checkpoint_interval=1)


# --------------------------------------------------------------------------- helpers


def make_cohort(root: Path, n: int = 8, seed: int = 0) -> Path:
    """``n`` generated cases: images/ (raw-like intensities) and, outside the cohort layout, truth/."""
    (root / "images").mkdir(parents=True)
    (root / "truth").mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, label = blob_case(SHAPE, rng)
        vol = Volume(array=(image * 50 + 200).astype(np.float32), **GEOMETRY)
        write_image(vol.array, vol, root / "images" / f"case{i}.nrrd")
        write_mask(label, vol, root / "truth" / f"case{i}.nrrd")
    return root


def on_grid(reference: Volume, array: np.ndarray) -> Volume:
    return Volume(array=array, spacing=reference.spacing, origin=reference.origin, direction=reference.direction)


def tiny_preset(path: Path, **changes) -> Path:
    path.write_text(json.dumps(dict(TINY_PRESET, **changes)))
    return path


def save_model(path: Path, seed: int = 0, fg_bias: float = 0.0) -> Path:
    """A seeded dual model in checkpoint form; ``fg_bias`` shifts both models' foreground logit."""
    torch.manual_seed(seed)
    net = CAMLNet(NetworkConfig(base_filters=4, feat_dim=8))
    with torch.no_grad():
        net.decoder1.out_conv.bias[1] += fg_bias
        net.decoder2.out_conv.bias[1] += fg_bias
    save_checkpoint(path, {"model": net.state_dict(), "network": net.config.to_dict(),
                           "preset": {"name": "test", "patch_size": list(SHAPE), "spacing": None}})
    return path


def truth(root: Path, case: str) -> Path:
    return root / "truth" / f"{case}.nrrd"


def engine_env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ENGINE_PARENT), str(Path(__file__).parent),
                                         env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def caml_process(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "CAMLSegmentationLib.cli", *args], env=engine_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_caml(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "CAMLSegmentationLib.cli", *args], env=engine_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def db_state(root: Path) -> Dict[str, list]:
    """Every row of the cohort's state tables except the job log (the durable state of the cohort)."""
    con = sqlite3.connect(f"{db_path(root).as_uri()}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                for t in ("meta", "cases", "versions", "val_scores")}
    finally:
        con.close()


def file_hashes(folder: Path) -> Dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("caml al: error: ")
    return err


@pytest.fixture
def cohort_root(tmp_path: Path) -> Path:
    root = make_cohort(tmp_path / "cohort")
    preset = tiny_preset(tmp_path / "tiny.json")
    assert caml(["al", "init", str(root), "--preset", str(preset), "--val-every", "3", "--model", "none"]) == 0
    return root


# --------------------------------------------------------------------------- state and errors


def test_init_records_every_image_in_wal_mode(cohort_root):
    with Cohort.open(cohort_root) as cohort:
        assert [c.id for c in cohort.cases()] == [f"case{i}" for i in range(8)]
        assert {c.status for c in cohort.cases()} == {UNLABELED}
        assert cohort.con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert cohort.con.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
        assert cohort.current_version() is None
        # No version yet: the first retrain is promoted whatever the validation, so no note about it.
        assert "no model version yet" in cohort.status()["notes"]
        assert not any("validation case" in n for n in cohort.status()["notes"])


def test_folder_without_images_is_one_line_error_and_creates_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "images" / "notes.txt").write_text("no images here")
    before = file_hashes(empty)
    assert caml(["al", "init", str(empty)]) == 2
    assert "no image files" in one_line_error(capsys)
    assert file_hashes(empty) == before and not (empty / "caml-al").exists()
    assert caml(["al", "status", str(tmp_path / "missing")]) == 2
    assert "not found" in one_line_error(capsys)


def test_accept_writes_label_on_image_grid_and_assigns_validation_for_good(cohort_root):
    with Cohort.open(cohort_root) as cohort:
        roles = [cohort.accept(f"case{i}", read_image(truth(cohort_root, f"case{i}")))["status"] for i in range(4)]
        # Every 3rd accepted case goes to validation.
        assert roles == [ACCEPTED_TRAIN, ACCEPTED_TRAIN, ACCEPTED_VAL, ACCEPTED_TRAIN]
        label = read_image(cohort_root / "labels" / "case0.nrrd")
        image = read_image(cohort_root / "images" / "case0.nrrd")
        assert label.same_geometry(image, tol=1e-6)
        np.testing.assert_array_equal(label.array, read_image(truth(cohort_root, "case0")).array)
        # Re-accepting replaces the label and keeps the role; a role never changes.
        flipped = read_image(truth(cohort_root, "case2"))
        flipped = on_grid(flipped, 1 - flipped.array)
        assert cohort.accept("case2", flipped)["status"] == ACCEPTED_VAL
        np.testing.assert_array_equal(read_image(cohort_root / "labels" / "case2.nrrd").array, flipped.array)
        with pytest.raises(CohortError, match="role never changes"):
            cohort.accept("case0", read_image(truth(cohort_root, "case0")), role="val")
        with pytest.raises(CohortError, match="role never changes"):
            cohort.accept("case2", read_image(truth(cohort_root, "case2")), role="train")
        assert cohort.training_ids() == ["case0", "case1", "case3"]
        assert cohort.validation_ids() == ["case2"]


def test_bad_requests_are_one_line_errors_that_change_nothing(cohort_root, tmp_path, capsys):
    assert caml(["al", "accept", str(cohort_root), "case0", str(truth(cohort_root, "case0"))]) == 0
    capsys.readouterr()
    before_db, before_files = db_state(cohort_root), file_hashes(cohort_root / "labels")
    good = read_image(truth(cohort_root, "case1"))
    shifted = Volume(good.array, spacing=good.spacing, origin=(0.0, 0.0, 0.0))
    write_mask(shifted.array, shifted, tmp_path / "shifted.nrrd")
    small = Volume(good.array[:16], spacing=good.spacing, origin=good.origin)
    write_mask(small.array, small, tmp_path / "small.nrrd")
    write_image(good.array * 3, good, tmp_path / "three.nrrd")
    cases = [
        (["case1", str(tmp_path / "shifted.nrrd")], "not on its image's grid: origin"),
        (["case1", str(tmp_path / "small.nrrd")], "not on its image's grid: shape"),
        (["case1", str(tmp_path / "three.nrrd")], "must be binary"),
        (["nosuchcase", str(truth(cohort_root, "case1"))], "no case 'nosuchcase'"),
        (["case1", str(tmp_path / "absent.nrrd")], "no such label file"),
    ]
    for args, message in cases:
        assert caml(["al", "accept", str(cohort_root), *args]) == 2
        assert message in one_line_error(capsys)
    assert caml(["al", "use", str(cohort_root), "7"]) == 2
    assert "no model version 7" in one_line_error(capsys)
    assert caml(["al", "next", str(cohort_root), "--strategy", "disagreement"]) == 2
    assert "needs a model" in one_line_error(capsys)
    assert caml(["al", "retrain", str(cohort_root), "--progress", "none"]) == 2  # 1 training case < batch 2
    assert "at least 2" in one_line_error(capsys)
    assert db_state(cohort_root) == before_db
    assert file_hashes(cohort_root / "labels") == before_files


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign"])
def test_damaged_database_is_reported_and_never_rewritten(cohort_root, capsys, damage):
    db = db_path(cohort_root)
    with Cohort.open(cohort_root) as cohort:
        cohort.accept("case0", read_image(truth(cohort_root, "case0")))
    data = db.read_bytes()
    if damage == "garbage":
        db.write_bytes(data[:100] + os.urandom(4096) + data[4196:])
    elif damage == "truncated":
        db.write_bytes(data[:1500])
    else:
        con = sqlite3.connect(db)
        con.execute("DROP TABLE scores")
        con.commit()
        con.close()
    before = file_hashes(cohort_root)
    for args in (["status"], ["next", "--strategy", "first"], ["versions"], ["use", "1"],
                 ["accept", "case1", str(truth(cohort_root, "case1"))], ["retrain", "--progress", "none"]):
        assert caml(["al", args[0], str(cohort_root), *args[1:]]) == 2, args
        err = one_line_error(capsys)
        assert "damaged state database" in err or "not a database" in err, err
    after = file_hashes(cohort_root)
    # SQLite may leave its empty write-ahead log and shared-memory index beside the file: no data.
    for name in ("caml-al/state.sqlite-wal", "caml-al/state.sqlite-shm"):
        if name not in before and name in after:
            assert name.endswith("-shm") or (cohort_root / name).stat().st_size == 0
            del after[name]
    assert after == before


def test_missing_files_are_reported_not_repaired(cohort_root, tmp_path, capsys):
    save_model(tmp_path / "m.pt")
    with Cohort.open(cohort_root) as cohort:
        cohort.accept("case0", read_image(truth(cohort_root, "case0")))
        cohort.add_version(tmp_path / "m.pt", None, None, None, 0, [], promote=True)
        weights = cohort.weights()
    (cohort_root / "labels" / "case0.nrrd").unlink()
    weights.unlink()
    (cohort_root / "images" / "case7.nrrd").unlink()
    write_mask(np.zeros(SHAPE, np.uint8), read_image(cohort_root / "images" / "case5.nrrd"),
               cohort_root / "labels" / "case5.nrrd")
    before = db_state(cohort_root)
    assert caml(["al", "status", str(cohort_root)]) == 0
    out = capsys.readouterr().out
    assert "case case0: accepted label labels/case0.nrrd is gone" in out
    assert "weights caml-al/versions/" in out and "are gone" in out
    assert "case case7: image images/case7.nrrd is gone" in out
    assert "labels/case5.nrrd is not recorded as accepted" in out
    assert db_state(cohort_root) == before
    assert caml(["al", "next", str(cohort_root), "--strategy", "entropy"]) == 2
    assert "are gone" in one_line_error(capsys)


# --------------------------------------------------------------------------- strategies


def test_strategies_order_a_constructed_example_as_defined():
    shape = (20, 20, 10)
    inside = np.zeros(shape, bool)
    inside[5:15, 5:15, 2:8] = True  # 600 voxels of "atrium"
    outside_noise = np.where(inside, 0.0, 0.02)
    # agree: both models confident and identical.
    agree = (np.where(inside, 0.98, 0.02), np.where(inside, 0.98, 0.02))
    # split: both confident, but A marks only half of V's atrium.
    half = inside.copy()
    half[10:15] = False
    split = (np.where(inside, 0.98, 0.02), np.where(half, 0.98, 0.02))
    # unsure: both say 0.6 on the atrium (no disagreement, high entropy for V).
    unsure = (np.where(inside, 0.6, 0.02), np.where(inside, 0.6, 0.02))
    # big-background: like 'split' but in a scan four times larger; the region restricts to the atrium.
    big = tuple(np.pad(p, ((0, 20), (0, 20), (0, 0)), constant_values=0.02) for p in split)
    # nothing: neither model finds anything.
    nothing = (outside_noise, outside_noise)
    cases = {"agree": agree, "split": split, "unsure": unsure, "big": big, "nothing": nothing}
    dis = {k: strategies.disagreement_score(*v) for k, v in cases.items()}
    ent = {k: strategies.entropy_score(*v) for k, v in cases.items()}
    assert dis["nothing"] == 1.0 and ent["nothing"] == 1.0
    assert dis["agree"] == pytest.approx(0.0) and dis["unsure"] == pytest.approx(0.0)
    # Half of the union is disputed with |0.98 - 0.02| = 0.96: 0.48, whatever the background size.
    assert dis["split"] == pytest.approx(0.48) and dis["big"] == pytest.approx(dis["split"])
    order = {k: n for n, k in enumerate(cases)}
    assert strategies.rank(dis, order) == ["nothing", "split", "big", "agree", "unsure"]
    # Entropy of V on the region: H(0.6) = 0.971 bits on the atrium beats V's confident 0.98 (0.141 bits),
    # whether or not A agrees (the split case has V's probabilities of the agree case).
    assert ent["unsure"] == pytest.approx(0.97095, abs=1e-4)
    assert ent["agree"] == pytest.approx(0.14144, abs=1e-4) and ent["split"] == ent["agree"] == ent["big"]
    assert strategies.rank(ent, order) == ["nothing", "unsure", "agree", "split", "big"]
    # random: uniform in [0, 1), reproducible for a version, redrawn for another.
    r1 = [strategies.random_score(f"c{i}", 1, seed=0) for i in range(200)]
    assert r1 == [strategies.random_score(f"c{i}", 1, seed=0) for i in range(200)]
    assert r1 != [strategies.random_score(f"c{i}", 2, seed=0) for i in range(200)]
    assert 0 <= min(r1) and max(r1) < 1 and 0.4 < np.mean(r1) < 0.6


def test_first_and_random_follow_the_cohort(cohort_root):
    with Cohort.open(cohort_root) as cohort:
        cohort.accept("case0", read_image(truth(cohort_root, "case0")))
        first = strategies.next_case(cohort, "first")
        assert first["case"] == "case1" and first["prediction"] is None
        ranked = strategies.score_candidates(cohort, "random")
        assert set(ranked["scores"]) == {f"case{i}" for i in range(1, 8)}
        again = strategies.score_candidates(cohort, "random")
        assert again["computed"] == [] and again["scores"] == ranked["scores"]


def test_scores_are_cached_per_version_and_recomputed_only_when_it_changes(cohort_root, tmp_path):
    save_model(tmp_path / "a.pt", seed=1)
    save_model(tmp_path / "b.pt", seed=2)
    with Cohort.open(cohort_root) as cohort:
        v1 = cohort.add_version(tmp_path / "a.pt", None, None, None, 0, [], promote=True)
        v2 = cohort.add_version(tmp_path / "b.pt", v1, None, None, 0, [], promote=False)
        cohort.use(v1)
        first = strategies.score_candidates(cohort, "disagreement", device="cpu")
        assert sorted(first["computed"]) == sorted(f"case{i}" for i in range(8))
        times = cohort.score_times("disagreement", v1)
        # The same pass cached the entropy scores too.
        assert set(cohort.cached_scores("entropy", v1)) == set(times)
        nxt = strategies.next_case(cohort, "disagreement", device="cpu")
        assert nxt["computed"] == 0
        assert strategies.score_candidates(cohort, "entropy", device="cpu")["computed"] == []
        assert cohort.score_times("disagreement", v1) == times  # not rewritten either
        assert nxt["case"] == strategies.rank(first["scores"], {c.id: c.position for c in cohort.cases()})[0]
        assert Path(nxt["prediction"]).is_file() and cohort.case(nxt["case"]).status == PREDICTED
        assert cohort.case(nxt["case"]).predicted_version == v1
        # A new current version scores again, once.
        cohort.use(v2)
        assert len(strategies.score_candidates(cohort, "disagreement", device="cpu")["computed"]) == 8
        assert strategies.score_candidates(cohort, "disagreement", device="cpu")["computed"] == []
        cohort.use(v1)
        assert strategies.score_candidates(cohort, "disagreement", device="cpu")["computed"] == []


def test_scoring_runs_v_and_a_in_one_fast_pass_and_only_the_chosen_case_gets_the_default_proposal(
        cohort_root, tmp_path):
    from CAMLSegmentationLib.inference.predictor import InferenceOptions, count_windows, segment_volume

    save_model(tmp_path / "m.pt", seed=1, fg_bias=1.0)
    with Cohort.open(cohort_root) as cohort:
        cohort.add_version(tmp_path / "m.pt", None, None, None, 0, [], promote=True)
        model = strategies.load_dual_model(cohort.weights(1), "cpu")
        calls = {"v": [], "a": []}
        hooks = [model.networks[w].register_forward_hook(lambda m, i, o, w=w: calls[w].append(i[0].shape[0]))
                 for w in ("v", "a")]
        scored = strategies.score_candidates(cohort, "disagreement", "cpu", model=model)
        for h in hooks:
            h.remove()
        # The fast protocol: no flips, so each window batch goes once through V and once through A.
        fast = InferenceOptions.for_protocol(strategies.SCORING_PROTOCOL)
        volume = cohort.read_image("case0")
        windows = segment_volume(volume, model, fast)  # V alone, for the window count
        per_case = windows.info["windows"]
        assert len(calls["v"]) == len(calls["a"]) and sum(calls["v"]) == sum(calls["a"]) == 8 * per_case
        assert per_case == count_windows(tuple(windows.info["network_grid"]), model.window,
                                         tuple(windows.info["strides"]))
        # The scores are those of V's and A's own probabilities under the fast protocol.
        both = segment_volume(volume, model, fast.with_changes(uncertainty=True))
        a_alone = segment_volume(volume, strategies_a_only(model), fast)
        np.testing.assert_allclose(both.probability_a, a_alone.probability, atol=1e-5)
        np.testing.assert_allclose(both.probability, windows.probability, atol=1e-5)
        assert scored["scores"]["case0"] == pytest.approx(strategies.disagreement_score(both.probability,
                                                                                        both.probability_a))
        # Scoring writes no mask and serves nothing; next writes the default protocol's proposal for its case.
        assert not (cohort.state_dir / "predictions").exists() or not any((cohort.state_dir / "predictions").iterdir())
        assert all(c.status == UNLABELED for c in cohort.cases())
        nxt = strategies.next_case(cohort, "disagreement", device="cpu")
        assert nxt["computed"] == 0 and [p.name for p in (cohort.state_dir / "predictions").iterdir()] == [
            Path(nxt["prediction"]).name]
        proposal = segment_volume(cohort.read_image(nxt["case"]), model, InferenceOptions())
        np.testing.assert_array_equal(read_image(Path(nxt["prediction"])).array, proposal.mask)
        assert cohort.case(nxt["case"]).served_at is not None


def strategies_a_only(model):
    """Model A run in V's place (what the ranking did before V and A shared one pass)."""
    import dataclasses

    return dataclasses.replace(model, networks={"v": model.networks["a"]})


def test_correction_effort_is_recorded_per_accept_and_shown_by_status(cohort_root, tmp_path, capsys):
    from CAMLSegmentationLib.inference.metrics import dice

    save_model(tmp_path / "m.pt", seed=1, fg_bias=1.0)
    with Cohort.open(cohort_root) as cohort:
        cohort.add_version(tmp_path / "m.pt", None, None, None, 0, [], promote=True)
        # A case accepted without being served has no proposal and no time.
        cohort.accept("case7", read_image(truth(cohort_root, "case7")))
        served = []
        for _ in range(6):
            nxt = strategies.next_case(cohort, "disagreement", device="cpu")
            time.sleep(0.2)
            result = cohort.accept(nxt["case"], read_image(truth(cohort_root, nxt["case"])))
            served.append((nxt["case"], Path(nxt["prediction"])))
            assert result["correction"]["case"] == nxt["case"] and result["correction"]["proposal_version"] == 1
    assert caml(["al", "status", str(cohort_root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["correction"]
    assert [r["case"] for r in rows] == ["case7"] + [c for c, _ in served]
    assert [r["accept_order"] for r in rows] == list(range(1, 8))
    for r in rows:
        assert list(r) == ["case", "accept_order", "proposal_version", "dice", "voxels_changed", "seconds"]
    assert rows[0] == {"case": "case7", "accept_order": 1, "proposal_version": None, "dice": None,
                       "voxels_changed": None, "seconds": None}
    for r, (case, proposal_file) in zip(rows[1:], served):
        proposal = read_image(proposal_file).array > 0
        label = read_image(truth(cohort_root, case)).array > 0
        assert r["proposal_version"] == 1 and isinstance(r["voxels_changed"], int)
        assert r["dice"] == pytest.approx(dice(proposal, label))
        assert r["voxels_changed"] == int(np.count_nonzero(proposal != label)) > 0
        assert 0.2 <= r["seconds"] < 60
    assert caml(["al", "status", str(cohort_root)]) == 0
    text = capsys.readouterr().out
    assert "correction effort (latest 5 of 7 accepted cases):" in text
    last = rows[-1]
    assert f"#7 {last['case']}: proposal of version 1: Dice {last['dice']:.3f}, {last['voxels_changed']} voxels " \
           "changed" in text
    # 6 measured: the latest 5 against the one before them.
    measured = [r["dice"] for r in rows[1:]]
    assert f"trend: mean proposal Dice {np.mean(measured[1:]):.3f} over the latest 5, {measured[0]:.3f} over " \
           "the 1 before" in text
    # Re-accepting a case replaces its record (the final label is what was corrected to).
    case, proposal_file = served[0]
    with Cohort.open(cohort_root) as cohort:
        other = read_image(truth(cohort_root, "case7"))
        again = cohort.accept(case, on_grid(read_image(truth(cohort_root, case)), other.array))["correction"]
        assert again["dice"] == pytest.approx(dice(read_image(proposal_file).array > 0, other.array > 0))
        assert cohort.corrections()[1] == again


def test_status_shows_the_trend_of_the_correction_effort():
    from CAMLSegmentationLib.cli.al import format_corrections

    rows = [{"case": f"c{n}", "accept_order": n + 1, "proposal_version": 1 + n // 4, "dice": 0.70 + 0.02 * n,
             "voxels_changed": 1000 - 50 * n, "seconds": 60.0 - n} for n in range(12)]
    text = "\n".join(format_corrections(rows))
    assert "latest 5 of 12" in text and "#12 c11" in text and "#7 c6" not in text
    # latest 5: 0.84..0.92 (mean 0.88); the 5 before: 0.74..0.82 (mean 0.78)
    assert "trend: mean proposal Dice 0.880 over the latest 5, 0.780 over the 5 before (less to correct)" in text
    assert format_corrections([]) == []


# --------------------------------------------------------------------------- concurrency and crashes

_ACCEPT_MANY = """
import sys, time
from CAMLSegmentationLib.activelearning.cohort import Cohort
from CAMLSegmentationLib.io.volume import read_image
root, start, cases = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
labels = [read_image(f"{root}/truth/{c}.nrrd") for c in cases]
with Cohort.open(root) as cohort:
    while time.time() < start:
        time.sleep(0.001)
    for c, label in zip(cases, labels):
        cohort.accept(c, label)
print("ok")
"""


@pytest.mark.slow
def test_two_processes_accepting_at_the_same_moment_both_land(cohort_root):
    start = time.time() + 8.0  # both processes are loaded by then, and start together
    groups = [["case0", "case2", "case4"], ["case1", "case3", "case5"]]
    procs = [subprocess.Popen([sys.executable, "-c", _ACCEPT_MANY, str(cohort_root), str(start), *g],
                              env=engine_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for g in groups]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "ok", err
    with Cohort.open(cohort_root) as cohort:
        accepted = {c.id: c for c in cohort.cases([ACCEPTED_TRAIN, ACCEPTED_VAL])}
        assert sorted(accepted) == [f"case{i}" for i in range(6)]
        orders = sorted(c.accept_order for c in accepted.values())
        assert orders == [1, 2, 3, 4, 5, 6]
        for c in accepted.values():  # every 3rd in acceptance order went to validation
            assert c.status == (ACCEPTED_VAL if c.accept_order % 3 == 0 else ACCEPTED_TRAIN)
            assert (cohort_root / c.label_file).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("point", ["accept-before-write", "accept-after-write", "accept-after-commit"])
def test_sigkill_mid_accept_loses_nothing(cohort_root, point):
    assert caml(["al", "accept", str(cohort_root), "case0", str(truth(cohort_root, "case0"))]) == 0
    before = db_state(cohort_root)
    # Re-accept case0 with another label, and accept case1, each killed at the point.
    other = read_image(truth(cohort_root, "case3"))
    write_mask(other.array, other, cohort_root.parent / "other.nrrd")
    for case, label in (("case0", cohort_root.parent / "other.nrrd"), ("case1", truth(cohort_root, "case1"))):
        done = run_caml("al", "accept", str(cohort_root), case, str(label), CAML_AL_KILL_AT=point)
        assert done.returncode == -signal.SIGKILL, done.stderr
    after = db_state(cohort_root)
    with Cohort.open(cohort_root) as cohort:
        if point == "accept-after-commit":
            assert cohort.case("case1").status == ACCEPTED_TRAIN
            np.testing.assert_array_equal(cohort.label("case0"), other.array)
            assert cohort.problems() == []
        else:
            assert after == before  # the database is exactly as before the interrupted accepts
            assert cohort.case("case1").status == UNLABELED
            expected = other if point == "accept-after-write" else read_image(truth(cohort_root, "case0"))
            np.testing.assert_array_equal(cohort.label("case0"), expected.array)  # a whole file, old or new
            unrecorded = [p for p in cohort.problems() if "not recorded as accepted" in p]
            assert len(unrecorded) == (1 if point == "accept-after-write" else 0)
        assert not list((cohort_root / "labels").glob(".*"))  # no half-written temporary
        # The cohort works on: the interrupted accept simply runs again.
        cohort.accept("case1", read_image(truth(cohort_root, "case1")))
        assert cohort.case("case1").status == ACCEPTED_TRAIN and cohort.problems() == []


@pytest.mark.slow
def test_sigkill_at_random_moments_of_accept_keeps_the_database_consistent(cohort_root):
    rng = np.random.default_rng(4)
    for n in range(4):
        case = f"case{n}"
        proc = caml_process("al", "accept", str(cohort_root), case, str(truth(cohort_root, case)))
        time.sleep(float(rng.uniform(0.2, 4.0)))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        with Cohort.open(cohort_root) as cohort:
            row = cohort.case(case)
            assert row.status in (UNLABELED, ACCEPTED_TRAIN, ACCEPTED_VAL)
            if row.status != UNLABELED:  # recorded => its label is complete and readable
                np.testing.assert_array_equal(cohort.label(case), read_image(truth(cohort_root, case)).array)
    db_state(cohort_root)  # integrity check


def _accept_training_cases(root: Path, cases: List[str], role: str = "train") -> None:
    with Cohort.open(root) as cohort:
        for c in cases:
            cohort.accept(c, read_image(truth(root, c)), role=role)


def _wait_for_line(proc: subprocess.Popen, predicate, timeout: float = 240) -> Optional[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            return None
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if predicate(event):
            return event
    return None


@pytest.mark.slow
def test_sigkill_mid_retrain_leaves_versions_and_cases_unchanged_and_resume_finishes(cohort_root, tmp_path):
    save_model(tmp_path / "start.pt", seed=3)
    with Cohort.open(cohort_root) as cohort:
        cohort.add_version(tmp_path / "start.pt", None, None, None, 0, [], promote=True)
    _accept_training_cases(cohort_root, ["case0", "case1", "case2"], role="train")
    _accept_training_cases(cohort_root, ["case3", "case4"], role="val")
    before = db_state(cohort_root)
    # 1. Killed mid-training (after iteration 2 of 6 reported its progress).
    proc = caml_process("al", "retrain", str(cohort_root), "--iterations", "6", "--progress", "json",
                        "--device", "cpu")
    assert _wait_for_line(proc, lambda e: e.get("stage") == "train" and e.get("done") == 2) is not None
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert db_state(cohort_root) == before
    with Cohort.open(cohort_root) as cohort:
        assert cohort.jobs()[-1]["state"] == "interrupted"
        assert any("interrupted" in p for p in cohort.status()["problems"])
    # 2. Resumed, then killed at each later moment of the job: after training, after scoring, before the commit.
    for point in ("retrain-after-train", "retrain-after-score", "version-before-commit"):
        done = run_caml("al", "retrain", str(cohort_root), "--resume", "--progress", "none", "--device", "cpu",
                        CAML_AL_KILL_AT=point)
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
        assert db_state(cohort_root) == before, point
    # 3. Resumed to the end: the job's training continued from its checkpoint (6 iterations in all).
    done = run_caml("al", "retrain", str(cohort_root), "--resume", "--progress", "none", "--device", "cpu",
                    "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    ckpt = read_checkpoint(result["weights"])
    assert ckpt["trained"]["iteration"] == 6
    assert ckpt["trained"]["split"]["labeled"] == ["case0", "case1", "case2"]
    with Cohort.open(cohort_root) as cohort:
        assert [v["id"] for v in cohort.versions()] == [1, 2]
        assert cohort.jobs()[-1]["state"] == "done" and cohort.problems() == []


@pytest.mark.slow
def test_cancel_stops_the_retrain_without_changing_the_cohort(cohort_root, tmp_path):
    _accept_training_cases(cohort_root, ["case0", "case1"], role="train")
    before = db_state(cohort_root)
    proc = caml_process("al", "retrain", str(cohort_root), "--iterations", "400", "--progress", "json",
                        "--device", "cpu")
    assert _wait_for_line(proc, lambda e: e.get("stage") == "train" and e.get("done", 0) >= 1) is not None
    cancel = run_caml("al", "retrain", str(cohort_root), "--cancel")
    assert cancel.returncode == 0, cancel.stderr
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert json.loads(out.strip().splitlines()[-1])["event"] == "cancelled"
    assert db_state(cohort_root) == before
    with Cohort.open(cohort_root) as cohort:
        job = cohort.jobs()[-1]
        assert job["state"] == "cancelled"
        assert (cohort_root / job["folder"] / "train" / "last.pt").is_file()  # resumable
        assert cohort.versions() == [] and cohort.current_version() is None


# --------------------------------------------------------------------------- versions


@pytest.mark.slow
def test_retrain_promotion_follows_validation_and_use_restores(cohort_root, tmp_path, capsys):
    """Constructed so the comparison has a known answer in each direction.

    Version 1 predicts background everywhere; retrains learn from all-foreground training labels,
    so their candidates predict foreground. Against all-foreground validation labels the
    candidate is better (promoted); after rolling back to version 1 and changing the validation
    labels to empty masks, the candidate is worse (not promoted).
    """
    preset = tiny_preset(tmp_path / "fast.json", lr=1.0, iterations=10)
    with Cohort.open(cohort_root) as cohort:
        cohort.set_settings(preset=str(preset))
        cohort.add_version(save_model(tmp_path / "bg.pt", seed=5, fg_bias=-1.0), None, None, None, 0, [],
                           promote=True)
        image = cohort.read_image("case0")
        ones, zeros = on_grid(image, np.ones(SHAPE, np.float32)), on_grid(image, np.zeros(SHAPE, np.float32))
        for c in ("case0", "case1", "case4"):
            cohort.accept(c, ones, role="val", force=True)  # all foreground: on purpose
        for c in ("case2", "case3"):
            cohort.accept(c, ones, role="train", force=True)
    assert caml(["al", "retrain", str(cohort_root), "--device", "cpu", "--progress", "none", "--json"]) == 0
    up = json.loads(capsys.readouterr().out)
    assert up["current_dice"] == 0.0 and up["candidate_dice"] > 0.5
    assert up["promoted"] and up["version"] == 2 and up["current_version"] == 2
    assert up["comparison"]["wins"] == 3 and [r["current"] for r in up["comparison"]["cases"]] == [0.0] * 3
    assert (up["catalog"]["id"], up["catalog"]["version"]) == ("cohort", "2")  # promoted: listed for Segment

    assert caml(["al", "use", str(cohort_root), "1"]) == 0  # roll back
    with Cohort.open(cohort_root) as cohort:
        assert cohort.current_version() == 1
        for c in ("case0", "case1", "case4"):
            assert cohort.accept(c, zeros, force=True)["status"] == ACCEPTED_VAL  # new labels, same role
    capsys.readouterr()
    assert caml(["al", "retrain", str(cohort_root), "--device", "cpu", "--progress", "none", "--json"]) == 0
    down = json.loads(capsys.readouterr().out)
    assert down["current_dice"] == 1.0 and down["candidate_dice"] < 1.0  # scored on the new labels
    assert not down["promoted"] and down["version"] == 3 and down["current_version"] == 1
    assert down["catalog"] is None  # kept: the catalog still lists version 1, from the rollback
    from CAMLSegmentationLib.model.catalog import find_model

    assert find_model("cohort").version == "1"
    assert down["comparison"]["losses"] == 3 and down["reason"].startswith("kept, not promoted: better on 0 of 3")

    # The numbers are the one predictor's: rescore version 3 independently.
    from CAMLSegmentationLib.inference.metrics import dice
    from CAMLSegmentationLib.inference.predictor import InferenceOptions, load_inference_model, segment_volume

    with Cohort.open(cohort_root) as cohort:
        model = load_inference_model(cohort.weights(3), "cpu")
        again = np.mean([dice(segment_volume(cohort.read_image(c), model, InferenceOptions()).mask,
                              cohort.label(c)) for c in ("case0", "case1", "case4")])
        assert again == pytest.approx(down["candidate_dice"], abs=1e-9)
        assert [v["parent"] for v in cohort.versions()] == [None, 1, 1]
        assert [v["promoted"] for v in cohort.versions()] == [True, True, False]
    # Override: any version can be made current.
    assert caml(["al", "use", str(cohort_root), "3"]) == 0
    capsys.readouterr()
    assert caml(["al", "versions", str(cohort_root), "--json", "--progress", "none", "--rescore",
                 "--device", "cpu"]) == 0
    table = json.loads(capsys.readouterr().out)["versions"]
    assert [v["current"] for v in table] == [False, False, True]
    assert table[0]["current_val_dice"] == 1.0 and table[2]["current_val_dice"] == pytest.approx(again)


@pytest.mark.slow
def test_first_retrain_promotes_then_too_few_validation_cases_keep_the_candidate(cohort_root, capsys):
    _accept_training_cases(cohort_root, ["case0", "case1"], role="train")
    assert caml(["al", "retrain", str(cohort_root), "--device", "cpu", "--progress", "none", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["promoted"] and first["reason"] == "first version" and first["comparison"] is None
    _accept_training_cases(cohort_root, ["case2"], role="val")
    assert caml(["al", "status", str(cohort_root)]) == 0
    assert ("only 1 validation case(s): until there are 3 (accept 2 more as validation), a retrain keeps its new "
            "version without promoting it") in capsys.readouterr().out
    assert caml(["al", "retrain", str(cohort_root), "--device", "cpu", "--progress", "none", "--json",
                 "--promote", "never"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert not second["promoted"] and second["current_version"] == first["version"]
    assert caml(["al", "retrain", str(cohort_root), "--device", "cpu", "--progress", "none", "--json"]) == 0
    third = json.loads(capsys.readouterr().out)
    assert not third["promoted"] and third["current_version"] == first["version"]
    assert "1 validation case(s), 3 needed" in third["reason"] and third["validation_needed"] == 2
    assert caml(["al", "status", str(cohort_root)]) == 0
    assert f"latest retrain: version {third['version']} kept, not promoted" in capsys.readouterr().out
    # The evidence stays with the version: caml al versions shows it per case.
    assert caml(["al", "versions", str(cohort_root)]) == 0
    table = capsys.readouterr().out
    assert f"vs version {first['version']}:" in table and "  case2: " in table
    # The job's labeled list holds the training cases only, never the validation case.
    with Cohort.open(cohort_root) as cohort:
        job = cohort.jobs()[-1]
        assert (cohort_root / job["folder"] / "labeled.list").read_text().split() == ["case0", "case1"]


def test_supervised_only_retrain_trains_without_the_unlabeled_stream(cohort_root, capsys):
    _accept_training_cases(cohort_root, ["case0", "case1"], role="train")
    runs = {}
    for flags in ([], ["--supervised-only"]):
        assert caml(["al", "retrain", str(cohort_root), "--device", "cpu", "--progress", "none", "--json",
                     *flags]) == 0
        result = json.loads(capsys.readouterr().out)
        with Cohort.open(cohort_root) as cohort:
            job_dir = cohort_root / cohort.jobs()[-1]["folder"]
        runs[bool(flags)] = (result, job_dir)
    for supervised, (result, job_dir) in runs.items():
        assert json.loads((job_dir / "job.json").read_text())["supervised_only"] is supervised
        unlabeled = (job_dir / "unlabeled.list").read_text().split()
        assert unlabeled == ([] if supervised else [f"case{i}" for i in range(2, 8)])
        # The trainer ran as asked: the weights record it.
        assert read_checkpoint(Path(result["weights"]))["supervised_only"] is supervised


def test_auto_retrain_every_n_accepts(cohort_root, capsys):
    with Cohort.open(cohort_root) as cohort:
        cohort.set_settings(auto_retrain=2, val_every=0)
    assert caml(["al", "accept", str(cohort_root), "case0", str(truth(cohort_root, "case0")), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["retrain_due"] is False
    assert caml(["al", "accept", str(cohort_root), "case1", str(truth(cohort_root, "case1")), "--json",
                 "--retrain-when-due", "--device", "cpu", "--progress", "none"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["retrain_due"] is True and result["retrain"]["version"] == 1
    with Cohort.open(cohort_root) as cohort:
        assert cohort.current_version() == 1 and not cohort.retrain_due()


def test_train_init_weights_starts_from_the_given_weights(tmp_path):
    root = make_cohort(tmp_path / "data", n=4)
    (root / "labels").mkdir()
    for c in ("case0", "case1"):
        (root / "labels" / f"{c}.nrrd").write_bytes(truth(root, c).read_bytes())
    start = save_model(tmp_path / "start.pt", seed=9)
    # lr 1e-30: a step too small to change any float32 weight (a preset refuses lr 0)
    preset = tiny_preset(tmp_path / "p.json", lr=1e-30, weight_decay=0.0, iterations=1)
    assert caml(["train", "--preset", str(preset), "--data", str(root), "--labeled", "2", "--out",
                 str(tmp_path / "run"), "--init-weights", str(start), "--progress", "none", "--device", "cpu"]) == 0
    got = read_checkpoint(tmp_path / "run" / "last.pt")["model"]
    want = read_checkpoint(start)["model"]
    params = {n for n, _ in CAMLNet(NetworkConfig(base_filters=4, feat_dim=8)).named_parameters()}
    assert all(torch.allclose(got[k], want[k], rtol=0, atol=1e-20) for k in params)  # the starting weights
    bad = save_checkpoint(tmp_path / "wide.pt", {"model": CAMLNet(NetworkConfig(base_filters=8)).state_dict(),
                                                  "network": {"base_filters": 8}}) or tmp_path / "wide.pt"
    assert caml(["train", "--preset", str(preset), "--data", str(root), "--labeled", "2", "--out",
                 str(tmp_path / "run2"), "--init-weights", str(bad), "--progress", "none"]) == 2


# --------------------------------------------------------------------------- CLI documentation


def _al_parsers():
    from CAMLSegmentationLib.cli import build_parser

    parser = build_parser()
    al = parser._subparsers._group_actions[0].choices["al"]
    return al._subparsers._group_actions[0].choices


def test_every_al_flag_is_in_help_and_readme():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Active learning"):]
    section = section[:section.index("\n## ", 5)] if "\n## " in section[5:] else section
    parsers = _al_parsers()
    assert sorted(parsers) == sorted(["init", "status", "next", "accept", "retrain", "versions", "use"])
    for name, sub in parsers.items():
        help_text = sub.format_help()
        assert f"caml al {name}" in section, name
        for action in sub._actions:
            for flag in action.option_strings:
                if flag in ("-h", "--help"):
                    continue
                assert flag in help_text, (name, flag)
                assert flag in section, (name, flag)


@pytest.mark.slow
def test_retrain_warm_starts_from_the_bundled_release(tmp_path, capsys):
    """The bundled model (a release: models V and A in fp16, no OCC heads) as version 1, then a retrain."""
    from CAMLSegmentationLib.model.catalog import find_model, verify

    bundled = read_checkpoint(verify(find_model("caml-la-cpu8")))
    root = make_cohort(tmp_path / "cohort", n=4)
    assert caml(["al", "init", str(root), "--model", "caml-la-cpu8"]) == 0
    _accept_training_cases(root, ["case0", "case1"])
    capsys.readouterr()
    assert caml(["al", "retrain", str(root), "--iterations", "1", "--device", "cpu", "--progress", "none",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # No validation case yet: the new version is kept beside the bundled model, not promoted.
    assert not result["promoted"] and result["base_version"] == 1
    assert "0 validation case(s), 3 needed" in result["reason"]
    with Cohort.open(root) as cohort:
        assert [v["parent"] for v in cohort.versions()] == [None, 1] and cohort.current_version() == 1
        new = read_checkpoint(cohort.weights(2))
    # Same network and geometry as the release; the weights moved from it by one step only.
    assert new["network"]["base_filters"] == bundled["network"]["base_filters"]
    assert new["preset"]["spacing"] == bundled["preset"]["spacing"]
    assert new["preset"]["patch_size"] == bundled["preset"]["patch_size"]
    key = "encoder1.block_one.conv.0.weight"
    start, after = bundled["model"][key].float(), new["model"][key]
    assert not torch.equal(start, after) and torch.allclose(start, after, atol=0.05)

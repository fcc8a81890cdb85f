"""Hostile use of the active-learning cohort (issue 27): what test_hostile.py does for ``caml segment``.

Each test stages one finding of the issue for real: real SQLite files, real
child processes and signals, a real read-only folder, a real file-size limit;
a reboot or another machine, which cannot be staged, by editing the job row's
pid and host as they would read afterwards.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from CAMLSegmentationLib.activelearning.cohort import ACCEPTED_VAL, SCHEMA_VERSION, Cohort, CohortError, db_path
from CAMLSegmentationLib.activelearning.liveness import JobLock, this_host
from CAMLSegmentationLib.activelearning.retrain import finetune_preset, retrain, score_on_validation
from CAMLSegmentationLib.cli import main as caml
from CAMLSegmentationLib.io.volume import Volume, read_image, write_image
from test_active_learning import (
    GEOMETRY,
    SHAPE,
    engine_env,
    make_cohort,
    on_grid,
    run_caml,
    save_model,
    tiny_preset,
    truth,
)

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def init(root: Path, tmp_path: Path, *extra: str) -> Path:
    preset = tiny_preset(tmp_path / "tiny.json")
    assert caml(["al", "init", str(root), "--preset", str(preset), "--model", "none", *extra]) == 0
    return root


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    return init(make_cohort(tmp_path / "cohort"), tmp_path)


def accept(root: Path, case: str, role: str = "auto", label=None) -> None:
    with Cohort.open(root) as c:
        c.accept(case, label if label is not None else read_image(truth(root, case)), role=role)


def insert_running_job(root: Path, pid: int, host: str, process_start: str = "not-this-process") -> int:
    """A job row as a crash, a reboot (the pid now names another process) or another machine leaves it."""
    con = sqlite3.connect(db_path(root))
    with con:
        cur = con.execute("INSERT INTO jobs (kind, state, started_at, pid, host, process_start, folder) "
                          "VALUES ('retrain', 'running', '2024-01-01', ?, ?, ?, 'caml-al/jobs/job-0001')",
                          (pid, host, process_start))
    con.close()
    return int(cur.lastrowid)


def true_dice(root: Path, weights: Path, case: str) -> float:
    from CAMLSegmentationLib.inference.metrics import dice
    from CAMLSegmentationLib.inference.predictor import InferenceOptions, load_inference_model, segment_volume

    model = load_inference_model(weights, "cpu")
    with Cohort.open(root) as c:
        return dice(segment_volume(c.read_image(case), model, InferenceOptions()).mask > 0, c.label(case) > 0)


# --------------------------------------------------------------------------- 1. job liveness


def test_cancel_signals_only_the_verified_job_and_marks_dead_ones_interrupted(cohort: Path, capsys) -> None:
    bystander = subprocess.Popen(["sleep", "120"])
    try:
        # The job died; its pid now belongs to an unrelated process (a crash, a reboot).
        job = insert_running_job(cohort, bystander.pid, this_host())
        with Cohort.open(cohort) as c:
            assert c.running_job() is None and c.jobs()[-1]["state"] == "interrupted"
        assert caml(["al", "retrain", str(cohort), "--cancel"]) == 0
        assert "not running" in capsys.readouterr().out
        assert bystander.poll() is None, "an unrelated process was signalled"
        with Cohort.open(cohort) as c:
            assert c.jobs()[-1]["state"] == "interrupted" and c.jobs()[-1]["id"] == job
        # A job recorded by another machine whose process is gone does not block the cohort.
        insert_running_job(cohort, bystander.pid, "another-machine")
        with Cohort.open(cohort) as c:
            assert c.running_job() is None
        assert caml(["al", "retrain", str(cohort), "--cancel"]) == 0
        assert bystander.poll() is None
        # While the job lock is held (a live job), a pid that is not the job's process is never signalled,
        # and a live job on another host is left to that host.
        holder = JobLock(cohort / "caml-al")
        assert holder.acquire()
        try:
            insert_running_job(cohort, bystander.pid, this_host())
            capsys.readouterr()
            assert caml(["al", "retrain", str(cohort), "--cancel"]) == 2
            assert "cannot be verified" in one_line(capsys.readouterr().err)
            insert_running_job(cohort, bystander.pid, "another-machine")
            assert caml(["al", "retrain", str(cohort), "--cancel"]) == 2
            assert "runs on host another-machine" in one_line(capsys.readouterr().err)
        finally:
            holder.release()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


# --------------------------------------------------------------------------- 2. checksums


def test_a_tampered_version_file_is_refused_before_use(cohort: Path, tmp_path: Path, capsys) -> None:
    with Cohort.open(cohort) as c:
        c.add_version(save_model(tmp_path / "m.pt"), None, None, None, 0, [], promote=True)
        weights = c.weights()
    for case, role in (("case0", "train"), ("case1", "train"), ("case2", "val")):
        accept(cohort, case, role)
    data = bytearray(weights.read_bytes())
    data[-200:-100] = b"\x7f" * 100  # inside the last tensor's bytes
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    for args in (["use", "1"], ["next", "--strategy", "disagreement", "--device", "cpu"],
                 ["retrain", "--device", "cpu", "--progress", "none"],
                 ["versions", "--rescore", "--device", "cpu", "--progress", "none"]):
        assert caml(["al", args[0], str(cohort), *args[1:]]) == 2, args
        assert "checksum mismatch for version 1" in one_line(capsys.readouterr().err), args


def test_a_version_one_cohort_is_upgraded_with_checksums(cohort: Path, tmp_path: Path) -> None:
    with Cohort.open(cohort) as c:
        c.add_version(save_model(tmp_path / "m.pt"), None, None, None, 0, [], promote=True)
    con = sqlite3.connect(db_path(cohort))
    with con:  # as schema version 1 left it
        as_schema_two(con)
        con.execute("DROP TABLE image_problems")
        con.execute("ALTER TABLE versions DROP COLUMN sha256")
        con.execute("ALTER TABLE jobs DROP COLUMN process_start")
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    with Cohort.open(cohort) as c:
        assert c.meta("schema_version") == str(SCHEMA_VERSION) and len(c.versions()[0]["sha256"]) == 64
        c.weights(1)
        assert c.corrections() == []


def as_schema_two(con: sqlite3.Connection) -> None:
    """Take away what schema version 3 added (the correction effort)."""
    con.execute("DROP TABLE corrections")
    con.execute("ALTER TABLE cases DROP COLUMN served_at")
    con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")


def test_a_version_two_cohort_is_upgraded_in_one_transaction_keeping_its_accepts(cohort: Path,
                                                                                 tmp_path: Path) -> None:
    accept(cohort, "case0")
    con = sqlite3.connect(db_path(cohort))
    with con:
        as_schema_two(con)
    con.close()
    # Killed inside the upgrade's transaction: the database is still the version-2 one, and opens later.
    done = run_caml("al", "status", str(cohort), CAML_AL_KILL_AT="upgrade-before-commit")
    assert done.returncode == -signal.SIGKILL, done.stderr
    con = sqlite3.connect(db_path(cohort))
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"
    assert "corrections" not in {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    con.close()
    assert run_caml("al", "status", str(cohort), "--json").returncode == 0
    with Cohort.open(cohort) as c:
        assert c.meta("schema_version") == str(SCHEMA_VERSION) and c.case("case0").status != "unlabeled"
        # Accepted before efforts were recorded: listed, with nothing known.
        assert c.corrections() == [{"case": "case0", "accept_order": 1, "proposal_version": None, "dice": None,
                                    "voxels_changed": None, "seconds": None}]


# --------------------------------------------------------------------------- 3. scores keyed by what was scored


def test_an_accept_during_scoring_keeps_each_score_with_the_label_it_used(cohort: Path, tmp_path: Path) -> None:
    model = save_model(tmp_path / "m.pt", seed=2, fg_bias=2.0)
    with Cohort.open(cohort) as c:
        c.add_version(model, None, None, None, 0, [], promote=True)
    for case, role in (("case0", "train"), ("case1", "train"), ("case2", "val"), ("case3", "val")):
        accept(cohort, case, role)
    other = read_image(truth(cohort, "case6"))  # a different, plausible label on the same grid

    def accept_during_scoring(event) -> None:
        if event.stage == "validate" and event.done == 1 and not changed:
            changed.append(True)
            with Cohort.open(cohort) as c2:
                c2.accept("case2", other)

    # The scoring of a recorded version.
    changed: list = []
    with Cohort.open(cohort) as c:
        score_on_validation(c, 1, ["case2", "case3"], "cpu", progress=accept_during_scoring)
        cached = c.cached_val_scores(1, ["case2", "case3"])
    assert changed
    for case, value in cached.items():
        assert value == pytest.approx(true_dice(cohort, model, case), abs=1e-9), case

    # A retrain: the candidate scored case2 on the old label, then the label changed.
    accept(cohort, "case2", label=read_image(truth(cohort, "case2")))
    changed.clear()
    result = retrain(cohort, iterations=2, device="cpu", progress=accept_during_scoring)
    assert changed
    with Cohort.open(cohort) as c:
        for version in (1, result["version"]):
            weights = c.root / c.version(version)["weights"]
            cached = c.cached_val_scores(version, ["case2", "case3"])
            assert set(cached) == {"case2", "case3"}
            for case, value in cached.items():
                assert value == pytest.approx(true_dice(cohort, weights, case), abs=1e-9), (version, case)


# --------------------------------------------------------------------------- 4. case ids


def _write_named_image(folder: Path, name: bytes) -> None:
    rng = np.random.default_rng(1)
    volume = Volume(array=rng.normal(200, 50, SHAPE).astype(np.float32), **GEOMETRY)
    write_image(volume.array, volume, folder / "plain.nrrd")
    os.rename(os.fsencode(str(folder / "plain.nrrd")), os.fsencode(str(folder)) + b"/" + name)


@pytest.mark.parametrize("name", [b"bad\nname.nrrd", b"caf\xe9.nrrd", b"tab\there.nrrd", b"a#b.nrrd"])
def test_init_refuses_case_ids_a_list_cannot_carry_and_leaves_nothing(tmp_path: Path, name: bytes) -> None:
    root = make_cohort(tmp_path / "cohort", n=3)
    _write_named_image(root / "images", name)
    for _ in range(2):
        done = run_caml("al", "init", str(root), timeout=120)
        assert done.returncode == 2, done.stderr
        line = one_line(done.stderr)
        assert "rename the file" in line and name.split(b".")[0][:3].decode() in line
    assert not db_path(root).exists()
    assert [p.name for p in (root / "caml-al").iterdir()] == [] if (root / "caml-al").exists() else True


def test_images_with_unusable_names_added_later_are_left_out_and_named(cohort: Path, capsys) -> None:
    _write_named_image(cohort / "images", b"late\nname.nrrd")
    _write_named_image(cohort / "images", b"caf\xe9.nrrd")
    capsys.readouterr()
    assert caml(["al", "status", str(cohort)]) == 0
    out = capsys.readouterr().out
    assert "not a case: images/late\\nname.nrrd" in out and "not a case: images/caf\\xe9.nrrd" in out
    assert caml(["al", "next", str(cohort), "--strategy", "first"]) == 0
    with Cohort.open(cohort) as c:
        assert len(c.cases()) == 8


def test_case_ids_with_spaces_round_trip_through_a_retrain(tmp_path: Path) -> None:
    root = make_cohort(tmp_path / "cohort", n=5)
    for i, new in ((0, "case a"), (1, "case b")):
        (root / "images" / f"case{i}.nrrd").rename(root / "images" / f"{new}.nrrd")
        (root / "truth" / f"case{i}.nrrd").rename(root / "truth" / f"{new}.nrrd")
    init(root, tmp_path, "--auto-retrain", "2", "--val-every", "0")
    accept(root, "case a", "train")
    accept(root, "case b", "train")
    with Cohort.open(root) as c:
        assert c.retrain_due()
    result = retrain(root, iterations=2, device="cpu")
    with Cohort.open(root) as c:
        assert c.version(result["version"])["train_cases"] == ["case a", "case b"]
        assert not c.retrain_due()


# --------------------------------------------------------------------------- 5. honest errors


def _as_unprivileged() -> list:
    """A prefix that makes a child see file permissions even when the tests run as root."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be staged")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner,-linux_immutable"]


def test_a_read_only_cohort_reads_and_refuses_writes_as_read_only(cohort: Path, tmp_path: Path) -> None:
    with Cohort.open(cohort) as c:
        c.add_version(save_model(tmp_path / "m.pt"), None, None, None, 0, [], promote=True)
    accept(cohort, "case0", "train")
    prefix = _as_unprivileged()
    for path in [cohort, *cohort.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        def child(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([*prefix, sys.executable, "-m", "CAMLSegmentationLib.cli", "al", *args],
                                  env=engine_env(), capture_output=True, text=True, timeout=120)

        status = child("status", str(cohort))
        assert status.returncode == 0, status.stderr
        assert "1 accepted-train" in status.stdout and "read-only" in status.stdout
        versions = child("versions", str(cohort))
        assert versions.returncode == 0, versions.stderr
        accepted = child("accept", str(cohort), "case1", str(truth(cohort, "case1")))
        assert accepted.returncode == 2
        line = one_line(accepted.stderr)
        assert "read-only" in line and "damaged" not in line
    finally:
        for path in [cohort, *cohort.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


def test_a_full_database_disk_is_told_and_rolled_back(cohort: Path) -> None:
    with Cohort.open(cohort) as c:
        pages = c.con.execute("PRAGMA page_count").fetchone()[0]
        c.con.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
        many = {f"case{i % 8}": {f"s{j}": float(j) for j in range(400)} for i in range(8)}
        with pytest.raises(CohortError, match="no space left on the disk"):
            c.store_scores(1, many)
        assert not c.con.in_transaction
        c.con.execute(f"PRAGMA max_page_count = {10 ** 6}")
        c.store_scores(1, {"case0": {"first": 1.0}})  # the connection still works
        assert c.cached_scores("first", 1) == {"case0": 1.0}


def test_a_failed_commit_rolls_back(cohort: Path) -> None:
    with Cohort.open(cohort) as c:
        with pytest.raises(sqlite3.IntegrityError):
            with c.transaction() as con:
                con.execute("PRAGMA defer_foreign_keys = ON")  # the check moves to the COMMIT itself
                con.execute("INSERT INTO scores VALUES ('nosuchcase', 'first', 1, 0.5, 'now')")
        assert not c.con.in_transaction
        assert c.con.execute("SELECT COUNT(*) FROM scores WHERE case_id = 'nosuchcase'").fetchone()[0] == 0
        c.store_scores(1, {"case0": {"first": 1.0}})


# --------------------------------------------------------------------------- 6. committed means committed


def test_a_cancel_just_after_the_commit_does_not_undo_or_deny_it(cohort: Path, tmp_path: Path) -> None:
    done = run_caml("al", "accept", str(cohort), "case0", str(truth(cohort, "case0")), "--progress", "json",
                    CAML_AL_KILL_AT="accept-after-commit", CAML_AL_KILL_SIGNAL="SIGTERM", timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["event"] == "done"
    with Cohort.open(cohort) as c:
        assert c.case("case0").accepted
    accept(cohort, "case1", "train")
    done = run_caml("al", "retrain", str(cohort), "--iterations", "2", "--device", "cpu", "--progress", "none",
                    CAML_AL_KILL_AT="version-after-commit", CAML_AL_KILL_SIGNAL="SIGTERM")
    assert done.returncode == 0, done.stderr
    with Cohort.open(cohort) as c:
        assert c.jobs()[-1]["state"] == "done" and c.current_version() == 1


# --------------------------------------------------------------------------- 7. init all-or-nothing


def test_an_interrupted_init_leaves_no_cohort_and_init_again_works(tmp_path: Path) -> None:
    root = make_cohort(tmp_path / "cohort", n=3)
    model = save_model(tmp_path / "m.pt")
    killed = run_caml("al", "init", str(root), "--model", str(model), CAML_AL_KILL_AT="version-before-commit",
                      timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert not db_path(root).exists()
    again = run_caml("al", "init", str(root), "--model", str(model), "--json", timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["current_version"] == 1
    left = sorted(p.name for p in (root / "caml-al").rglob("*") if p.name.startswith("."))
    assert left == [], left


# --------------------------------------------------------------------------- 8. full disk during retrain


def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return apply


def test_a_full_disk_during_retrain_is_one_line_and_the_job_failed(cohort: Path) -> None:
    accept(cohort, "case0", "train")
    accept(cohort, "case1", "train")
    # Every file the child writes stops at 1 MB: the training checkpoint (several MB) cannot be written.
    done = subprocess.run([sys.executable, "-m", "CAMLSegmentationLib.cli", "al", "retrain", str(cohort),
                           "--iterations", "2", "--device", "cpu", "--progress", "none"], env=engine_env(),
                          capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(1 << 20))
    assert done.returncode == 2, done.stderr[-3000:]
    line = one_line(done.stderr)
    assert "retrain job 1 failed" in line and "no space left" in line
    with Cohort.open(cohort) as c:
        job = c.jobs()[-1]
        assert job["state"] == "failed" and "no space left" in job["message"]
        assert c.versions() == []


# --------------------------------------------------------------------------- 9. one bad image


def test_one_bad_image_is_skipped_by_next_and_retrain_and_named_in_status(cohort: Path, tmp_path: Path,
                                                                          capsys) -> None:
    nan = np.full(SHAPE, 100.0, np.float32)
    nan[3, 4, 5] = np.nan
    image = sitk.GetImageFromArray(nan.transpose(2, 1, 0))
    sitk.WriteImage(image, str(cohort / "images" / "case8.nrrd"))
    (cohort / "images" / "case9.nrrd").write_bytes(b"NRRD0004\nthis is not an image\n")
    big = Volume(array=np.random.default_rng(0).normal(200, 50, (64, 64, 32)).astype(np.float32), **GEOMETRY)
    write_image(big.array, big, cohort / "images" / "case10.nrrd")
    with Cohort.open(cohort) as c:
        c.add_version(save_model(tmp_path / "m.pt"), None, None, None, 0, [], promote=True)
    accept(cohort, "case0", "train")
    accept(cohort, "case1", "train")
    done = run_caml("al", "next", str(cohort), "--strategy", "disagreement", "--device", "cpu", "--json",
                    CAML_MAX_VOXELS=str(40 * 40 * 20))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["case"] not in ("case8", "case9", "case10")
    capsys.readouterr()
    assert caml(["al", "status", str(cohort)]) == 0
    out = capsys.readouterr().out
    for case, why in (("case8", "case8.nrrd: 1 voxels are NaN"), ("case9", "case9.nrrd"),
                      ("case10", "case10.nrrd")):
        assert f"case {case} is skipped by next and retrain: " in out and why in out, (case, out)
    done = run_caml("al", "retrain", str(cohort), "--iterations", "2", "--device", "cpu", "--progress", "none",
                    "--json", CAML_MAX_VOXELS=str(40 * 40 * 20))
    assert done.returncode == 0, done.stderr[-3000:]
    with Cohort.open(cohort) as c:
        stream = (cohort / c.jobs()[-1]["folder"] / "unlabeled.list").read_text().splitlines()
    assert "case2" in stream and not {"case8", "case9", "case10"} & set(stream)


# --------------------------------------------------------------------------- 10. plausible labels


def test_empty_and_all_foreground_labels_are_refused_unless_forced(cohort: Path, tmp_path: Path, capsys) -> None:
    reference = read_image(cohort / "images" / "case0.nrrd")
    for name, value, words in (("empty", 0, "is empty"), ("full", 1, "all foreground")):
        path = tmp_path / f"{name}.nrrd"
        write_image(np.full(SHAPE, value, np.uint8), on_grid(reference, reference.array), path)
        assert caml(["al", "accept", str(cohort), "case0", str(path)]) == 2
        assert words in one_line(capsys.readouterr().err)
        with Cohort.open(cohort) as c:
            assert not c.case("case0").accepted
    assert caml(["al", "accept", str(cohort), "case0", str(tmp_path / "empty.nrrd"), "--force"]) == 0


# --------------------------------------------------------------------------- 11. argument ranges


@pytest.mark.parametrize("args", [["init", "--seed", "-1"], ["init", "--seed", str(2 ** 40)],
                                  ["use", "99999999999999999999"], ["use", "0"], ["use", "-3"],
                                  ["retrain", "--seed", "-1"], ["retrain", "--iterations", "0"],
                                  ["init", "--val-every", "-2"]])
def test_out_of_range_numbers_are_usage_errors(tmp_path: Path, args, capsys) -> None:
    root = make_cohort(tmp_path / "cohort", n=2)
    with pytest.raises(SystemExit) as exit_:
        caml(["al", args[0], str(root), *args[1:]])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "must be" in err.splitlines()[-1]
    assert not db_path(root).exists()


def test_a_stored_seed_out_of_range_is_one_line(cohort: Path, capsys) -> None:
    accept(cohort, "case0", "train")
    accept(cohort, "case1", "train")
    con = sqlite3.connect(db_path(cohort))
    with con:
        con.execute("UPDATE meta SET value = '-1' WHERE key = 'seed'")
    con.close()
    capsys.readouterr()
    assert caml(["al", "retrain", str(cohort), "--progress", "none", "--device", "cpu"]) == 2
    assert "seed -1 is out of range" in one_line(capsys.readouterr().err)
    with Cohort.open(cohort) as c:
        assert c.jobs() == []


# --------------------------------------------------------------------------- 12. smaller


def test_a_closed_pipe_ends_quietly(cohort: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line (``| head -0``)
    proc = subprocess.run([sys.executable, "-m", "CAMLSegmentationLib.cli", "al", "status", str(cohort)],
                          env=engine_env(), stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_the_preset_travels_with_the_cohort(tmp_path: Path) -> None:
    root = make_cohort(tmp_path / "cohort", n=3)
    preset = tiny_preset(tmp_path / "elsewhere.json", iterations=3)
    assert caml(["al", "init", str(root), "--preset", str(preset), "--model", "none"]) == 0
    preset.unlink()
    moved = tmp_path / "moved"
    root.rename(moved)
    with Cohort.open(moved) as c:
        assert not Path(c.preset).is_absolute()
        assert finetune_preset(c, None, None, None).iterations == 3


def test_temporary_files_of_killed_processes_are_cleaned(cohort: Path) -> None:
    train = cohort / "caml-al" / "jobs" / "job-0001" / "train"
    train.mkdir(parents=True)
    leftovers = [train / ".last-k2j3h4.pt", cohort / "caml-al" / "versions" / ".job-0001-abcd.pt"]
    leftovers[1].parent.mkdir(parents=True, exist_ok=True)
    for path in leftovers:
        path.write_bytes(b"partial")
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = gone.pid  # a process that has ended
    init_tmp = cohort / "caml-al" / f".state.sqlite.init-{dead}"
    init_tmp.write_bytes(b"partial")
    with Cohort.open(cohort) as c:
        job = c.start_job("retrain", None)
        c.end_job(job["id"], "done")
    assert not any(p.exists() for p in leftovers) and not init_tmp.exists()
    fresh = make_cohort(cohort.parent / "fresh", n=2)
    (fresh / "caml-al").mkdir()
    stale = fresh / "caml-al" / f".state.sqlite.init-{dead}"
    stale.write_bytes(b"partial")
    assert caml(["al", "init", str(fresh), "--model", "none"]) == 0
    assert not stale.exists()


def test_a_job_row_edited_to_a_live_pid_does_not_block_retrain(cohort: Path, capsys) -> None:
    """After a reboot the recorded pid may be alive again (another program): the cohort is not blocked."""
    insert_running_job(cohort, os.getppid(), this_host())
    accept(cohort, "case0", "train")
    accept(cohort, "case1", "train")
    capsys.readouterr()
    assert caml(["al", "retrain", str(cohort), "--iterations", "1", "--device", "cpu", "--progress", "none"]) == 0
    with Cohort.open(cohort) as c:
        states = [j["state"] for j in c.jobs()]
    assert states == ["interrupted", "done"]


def test_role_of_validation_case_still_assigned(cohort: Path) -> None:
    """The hostile checks change nothing for a plain accept (every 4th case to validation by default)."""
    for i in range(4):
        accept(cohort, f"case{i}")
    with Cohort.open(cohort) as c:
        assert c.case("case3").status == ACCEPTED_VAL

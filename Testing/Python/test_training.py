"""End-to-end training on generated data: learning, exact resume, DDP, and input errors."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from CAMLSegmentationLib.cli import main as caml
from CAMLSegmentationLib.model.checkpoint import read_checkpoint
from CAMLSegmentationLib.model.network import CAMLNet, NetworkConfig
from CAMLSegmentationLib.training.presets import TrainingPreset
from CAMLSegmentationLib.training.trainer import TrainConfig, train
from synthetic import write_la_layout

TINY = TrainingPreset(name="tiny", spacing=None, patch_size=(32, 32, 16), base_filters=4, feat_dim=8,
                      iterations=6, lr=0.05, memory_per_class=16, num_filtered=256, rampup_interval=1,
                      rampup_length=4, val_start=1, val_interval=1000, checkpoint_interval=1000)


def write_preset(path: Path, preset: TrainingPreset) -> Path:
    path.write_text(json.dumps(preset.to_dict()))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("la")
    write_la_layout(root, 6, shape=(32, 32, 24))
    return root


def test_short_run_lowers_loss_and_beats_chance(dataset, tmp_path):
    (tmp_path / "val.list").write_text("case004\ncase005\n")
    preset = TINY.with_overrides(iterations=60, val_start=60, val_interval=60)
    result = train(TrainConfig(dataset, tmp_path / "run", preset, labeled=2, val_list=tmp_path / "val.list",
                               seed=3))
    losses = [h["loss_s"] for h in result.history if "loss_s" in h]
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    # Chance level: the best trivial answer, everything foreground.
    from CAMLSegmentationLib.training.loading import load_cases
    from CAMLSegmentationLib.training.sources import open_source

    cases = load_cases(open_source(dataset), ["case004", "case005"], None, with_label=True)
    chance = np.mean([2 * c.label.mean() / (1 + c.label.mean()) for c in cases])
    assert result.best_dice is not None and result.best_dice > chance + 0.1
    for name in ("last.pt", "best.pt", "train.log", "config.json"):
        assert (tmp_path / "run" / name).is_file()
    # The log ends with the run's own summary (it was once written after the file handler was gone).
    assert (tmp_path / "run" / "train.log").read_text().splitlines()[-1].endswith(
        f"finished 60 iterations in {result.seconds:.1f} s")
    assert "loss_o" in result.history[-1] and result.history[-1]["loss_o"] > 0


def test_resume_continues_exactly_like_an_uninterrupted_run(dataset, tmp_path):
    straight = train(TrainConfig(dataset, tmp_path / "a", TINY, labeled=2, seed=5, log_every=1))
    first = train(TrainConfig(dataset, tmp_path / "b", TINY.with_overrides(iterations=3), labeled=2, seed=5,
                              log_every=1))
    assert first.iterations == 3
    # The same stop written the way checkpoints were before per-rank states (one "rng"/"sampler").
    import shutil

    from CAMLSegmentationLib.model.checkpoint import save_checkpoint

    shutil.copytree(tmp_path / "b", tmp_path / "c")
    old = read_checkpoint(tmp_path / "c" / "last.pt")
    (state,) = old.pop("rank_states")
    save_checkpoint(tmp_path / "c" / "last.pt", dict(old, rng=state["rng"], sampler=state["sampler"]))
    resumed = train(TrainConfig(dataset, tmp_path / "b", TINY, labeled=2, seed=5, resume=True, log_every=1))
    assert resumed.iterations == straight.iterations == 6
    train(TrainConfig(dataset, tmp_path / "c", TINY, labeled=2, seed=5, resume=True, log_every=1))
    a = read_checkpoint(tmp_path / "a" / "last.pt")
    for run in ("b", "c"):
        b = read_checkpoint(tmp_path / run / "last.pt")
        for key, value in a["model"].items():
            assert torch.equal(value, b["model"][key]), key
        for sa, sb in zip(a["memory_bank"]["slots"], b["memory_bank"]["slots"]):
            assert (sa is None) == (sb is None)
            if sa is not None:
                assert all(torch.equal(x, y) for x, y in zip(sa, sb))
        assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_a_diverged_run_keeps_its_last_good_checkpoint(dataset, tmp_path):
    """A non-finite loss writes nothing: last.pt stays the last good iteration, finite, and resumable."""
    train(TrainConfig(dataset, tmp_path / "run", TINY.with_overrides(iterations=2), labeled=2, seed=5))
    good = read_checkpoint(tmp_path / "run" / "last.pt")
    assert good["iteration"] == 2
    # An absurd learning rate: the weights explode within an iteration or two and the loss turns NaN.
    exploding = TINY.with_overrides(iterations=50, lr=1e30, checkpoint_interval=1000)
    with pytest.raises(FloatingPointError, match="last good checkpoint is kept"):
        train(TrainConfig(dataset, tmp_path / "run", exploding, labeled=2, seed=5, resume=True))
    kept = read_checkpoint(tmp_path / "run" / "last.pt")
    assert kept["iteration"] == 2
    assert all(bool(torch.isfinite(v).all()) for v in kept["model"].values() if v.is_floating_point())
    for key, value in good["model"].items():
        assert torch.equal(value, kept["model"][key]), key
    resumed = train(TrainConfig(dataset, tmp_path / "run", TINY.with_overrides(iterations=3), labeled=2,
                                seed=5, resume=True))
    assert resumed.iterations == 3


def test_held_out_cases_take_no_part_and_evaluate_reports_them(dataset, tmp_path, capsys):
    """--holdout-list: in no stream, never validated on; `caml evaluate` without --list scores them."""
    (tmp_path / "holdout.list").write_text("case001\ncase005\n")
    (tmp_path / "val.list").write_text("case004\n")
    preset = write_preset(tmp_path / "p.json", TINY.with_overrides(iterations=2, val_start=2, val_interval=2))
    assert run_cli(["--data", dataset, "--labeled", "2", "--val-list", tmp_path / "val.list", "--holdout-list",
                    tmp_path / "holdout.list", "--out", tmp_path / "run", "--preset", preset], capsys)[0] == 0
    split = json.loads((tmp_path / "run" / "config.json").read_text())["split"]
    # "The first 2 labeled" skips the held-out case001; the default unlabeled stream leaves both out.
    assert split == {"labeled": ["case000", "case002"], "unlabeled": ["case003", "case004"],
                     "validation": ["case004"], "holdout": ["case001", "case005"]}
    code = caml(["evaluate", "--data", str(dataset), "--weights", str(tmp_path / "run" / "best.pt"),
                 "--out", str(tmp_path / "eval"), "--progress", "none", "--protocol", "fast"])
    assert code == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert [c["case"] for c in report["cases"]] == ["case001", "case005"]
    # A held-out case may not be put in any other role.
    (tmp_path / "val2.list").write_text("case005\n")
    code, err = run_cli(["--data", dataset, "--labeled", "2", "--val-list", tmp_path / "val2.list",
                         "--holdout-list", tmp_path / "holdout.list", "--out", tmp_path / "r2",
                         "--preset", preset], capsys)
    assert code == 2 and "held-out case(s) in this list: case005" in err


def test_selected_heads_preset_trains_with_the_occ_term(dataset, tmp_path):
    """The shipped cpu preset puts only the picked voxels through the OCC heads; that path trains too."""
    from CAMLSegmentationLib.training.presets import load_preset

    assert load_preset("cpu").occ_heads_on == "selected"
    preset = TINY.with_overrides(iterations=3, occ_heads_on="selected", num_filtered=64)
    result = train(TrainConfig(dataset, tmp_path / "run", preset, labeled=2, seed=2, log_every=1))
    assert [h["iteration"] for h in result.history] == [1, 2, 3]
    assert all(np.isfinite(h["loss"]) for h in result.history)
    assert all(h["loss_o"] > 0 for h in result.history[1:])  # the bank holds entries from iteration 1 on
    assert json.loads((tmp_path / "run" / "config.json").read_text())["preset"]["occ_heads_on"] == "selected"


def test_roi_and_shift_consistency_train_and_resume_exactly(dataset, tmp_path):
    """The field-of-view augmentations (ROI cut, shifted pairs of unlabeled crops) train, log the
    shift term, and keep a resumed run identical to an uninterrupted one."""
    preset = TINY.with_overrides(iterations=4, roi_probability=0.5, shift_consistency=1.0)
    straight = train(TrainConfig(dataset, tmp_path / "a", preset, labeled=2, seed=4, log_every=1))
    assert all(h["loss_t"] > 0 and np.isfinite(h["loss"]) for h in straight.history)
    train(TrainConfig(dataset, tmp_path / "b", preset.with_overrides(iterations=2), labeled=2, seed=4, log_every=1))
    resumed = train(TrainConfig(dataset, tmp_path / "b", preset, labeled=2, seed=4, resume=True, log_every=1))
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]
    a, b = read_checkpoint(tmp_path / "a" / "last.pt"), read_checkpoint(tmp_path / "b" / "last.pt")
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())


def test_supervised_only_trains_on_labeled_cases_alone(dataset, tmp_path, capsys):
    preset = write_preset(tmp_path / "p.json", TINY.with_overrides(iterations=3))
    # Every case labeled: nothing left for the unlabeled stream, which only a supervised run accepts.
    base = ["--data", dataset, "--labeled", "6", "--preset", preset]
    code, err = run_cli(base + ["--out", tmp_path / "caml"], capsys)
    assert code == 2 and "--supervised-only" in err
    code, err = run_cli(base + ["--out", tmp_path / "run", "--supervised-only", "--seed", "4"], capsys)
    assert code == 0, err
    ckpt = read_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["supervised_only"] is True and ckpt["iteration"] == 3
    assert ckpt["split"]["unlabeled"] == [] and len(ckpt["split"]["labeled"]) == 6
    assert all("loss_s" in h and "loss_c" not in h and "loss_o" not in h for h in ckpt["history"])
    assert all(slot is None for slot in ckpt["memory_bank"]["slots"])  # no OCC: the bank is never filled
    # The OCC heads get no gradient (they stay at their seeded initialisation); both sub-models learn.
    torch.manual_seed(4)
    init = CAMLNet(NetworkConfig(base_filters=4, feat_dim=8)).state_dict()
    for key, value in ckpt["model"].items():
        if key.startswith(("projection_head", "prediction_head")) and "running" not in key:
            assert torch.equal(value, init[key]), key
    for key in ("encoder1.block_one.conv.0.weight", "encoder2.block_one.conv.0.weight"):
        assert not torch.equal(ckpt["model"][key], init[key]), key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    """One rank: a straight 4-iteration run, and the same run stopped after 2 and resumed.

    Records, per iteration, the case indices the sampler gave this rank and a
    checksum of the augmented batch, for the test to compare across ranks and runs.
    """
    import torch.distributed as dist
    from CAMLSegmentationLib.training import trainer as trainer_mod

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    records: list = []
    real_next, real_make_batch = trainer_mod.TwoStreamSampler.next, trainer_mod.make_batch

    def recording_next(self, n_labeled, n_unlabeled):
        li, ui = real_next(self, n_labeled, n_unlabeled)
        records.append({"labeled": li, "unlabeled": ui})
        return li, ui

    def recording_make_batch(*args, **kwargs):
        x, y, shifts = real_make_batch(*args, **kwargs)
        records[-1]["batch_sum"] = float(x.double().sum())
        return x, y, shifts

    trainer_mod.TwoStreamSampler.next = recording_next
    trainer_mod.make_batch = recording_make_batch
    preset = TINY.with_overrides(iterations=4, checkpoint_interval=2)
    runs = {}
    for name, iterations, resume in (("straight", 4, False), ("first", 2, False), ("resumed", 4, True)):
        records.clear()
        folder = "straight" if name == "straight" else "stopped"
        result = train(TrainConfig(Path(root), Path(out) / folder, preset.with_overrides(iterations=iterations),
                                   labeled=2, seed=11, device="cpu", resume=resume))
        runs[name] = list(records)
        dist.barrier()  # rank 0 has written last.pt before any rank resumes from it
    (Path(out) / f"batches{rank}.json").write_text(json.dumps(runs))
    torch.save({"model": result.model.state_dict(), "bank": result.memory_bank.state_dict()},
               Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_runs(dataset, tmp_path_factory) -> Path:
    """Two gloo ranks on the CPU (what torchrun starts), each running ``_ddp_worker``."""
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(dataset), str(out)), nprocs=2, join=True)
    return out


def test_ddp_gloo_keeps_ranks_identical(ddp_runs):
    r0 = torch.load(ddp_runs / "rank0.pt")
    r1 = torch.load(ddp_runs / "rank1.pt")
    for key, value in r0["model"].items():
        assert torch.equal(value, r1["model"][key]) or "running" in key or "num_batches" in key, key
    params0 = [v for k, v in r0["model"].items() if "running" not in k and "num_batches" not in k]
    assert len(params0) > 100
    # The memory banks were all-gathered: identical on both ranks, and filled by both ranks' cases.
    slots0, slots1 = r0["bank"]["slots"], r1["bank"]["slots"]
    for s0, s1 in zip(slots0, slots1):
        assert (s0 is None) == (s1 is None)
        if s0 is not None:
            assert all(torch.equal(x, y) for x, y in zip(s0, s1))
    # Training moved the weights away from their (shared, seeded) initialisation.
    torch.manual_seed(11)
    init = CAMLNet(NetworkConfig(base_filters=4, feat_dim=8)).state_dict()
    assert not all(torch.equal(init[k], r0["model"][k]) for k in init)


def test_ddp_resume_restores_each_ranks_own_batches(ddp_runs):
    """Each rank resumes its own RNG and sampler state: its batches go on as in the uninterrupted run."""
    runs = [json.loads((ddp_runs / f"batches{r}.json").read_text()) for r in (0, 1)]
    for rank in (0, 1):
        straight, first, resumed = runs[rank]["straight"], runs[rank]["first"], runs[rank]["resumed"]
        assert len(straight) == 4 and len(first) == 2 and len(resumed) == 2
        assert first + resumed == straight, f"rank {rank}"
    for it in range(4):  # ranks draw different batches, before and after the resume
        assert runs[0]["straight"][it]["batch_sum"] != runs[1]["straight"][it]["batch_sum"]
    for it in range(2):
        assert runs[0]["resumed"][it]["batch_sum"] != runs[1]["resumed"][it]["batch_sum"]
    # One checkpoint holds both ranks' states, in types a weights-only load accepts.
    ckpt = torch.load(ddp_runs / "stopped" / "last.pt", weights_only=True)
    assert ckpt["iteration"] == 4 and ckpt["world_size"] == 2 and len(ckpt["rank_states"]) == 2
    assert ckpt["rank_states"][0]["rng"]["numpy"] != ckpt["rank_states"][1]["rng"]["numpy"]
    straight = read_checkpoint(ddp_runs / "straight" / "last.pt")
    for key, value in straight["model"].items():
        assert torch.equal(value, ckpt["model"][key]), key


# --------------------------------------------------------------------------- bad inputs


def run_cli(args, capsys):
    code = caml(["train", "--progress", "none"] + [str(a) for a in args])
    return code, capsys.readouterr().err


def test_missing_data_folder(tmp_path, capsys):
    code, err = run_cli(["--data", tmp_path / "nowhere", "--labeled", "2", "--out", tmp_path / "out"], capsys)
    assert code == 2 and "nowhere" in err
    assert not (tmp_path / "out").exists()


def test_unknown_case_id(dataset, tmp_path, capsys):
    (tmp_path / "lab.list").write_text("case000\nnot_a_case\n")
    code, err = run_cli(["--data", dataset, "--labeled-list", tmp_path / "lab.list", "--out", tmp_path / "out",
                         "--preset", write_preset(tmp_path / "p.json", TINY)], capsys)
    assert code == 2 and "not_a_case" in err
    assert not (tmp_path / "out").exists()


def test_fewer_labeled_than_the_batch(dataset, tmp_path, capsys):
    code, err = run_cli(["--data", dataset, "--labeled", "1", "--out", tmp_path / "out",
                         "--preset", write_preset(tmp_path / "p.json", TINY)], capsys)
    assert code == 2 and "batch" in err
    assert not (tmp_path / "out").exists()


def test_non_binary_label(tmp_path, capsys):
    import h5py

    write_la_layout(tmp_path / "d", 4, shape=(32, 32, 16))
    with h5py.File(tmp_path / "d" / "2018LA_Seg_Training Set" / "case001" / "mri_norm2.h5", "r+") as f:
        lab = f["label"][()]
        lab[0, 0, 0] = 3
        f["label"][...] = lab
    code, err = run_cli(["--data", tmp_path / "d", "--labeled", "2", "--out", tmp_path / "out",
                         "--preset", write_preset(tmp_path / "p.json", TINY)], capsys)
    assert code == 2 and "case001" in err and "3" in err
    assert not (tmp_path / "out").exists()


def test_shape_mismatch(tmp_path, capsys):
    import h5py

    write_la_layout(tmp_path / "d", 4, shape=(32, 32, 16))
    path = tmp_path / "d" / "2018LA_Seg_Training Set" / "case000" / "mri_norm2.h5"
    with h5py.File(path, "r+") as f:
        del f["label"]
        f.create_dataset("label", data=np.zeros((32, 32, 15), np.uint8))
    code, err = run_cli(["--data", tmp_path / "d", "--labeled", "2", "--out", tmp_path / "out",
                         "--preset", write_preset(tmp_path / "p.json", TINY)], capsys)
    assert code == 2 and "case000" in err and "shape" in err
    assert not (tmp_path / "out").exists()


def test_resume_from_corrupt_or_incompatible_checkpoint(dataset, tmp_path, capsys):
    preset = write_preset(tmp_path / "p.json", TINY.with_overrides(iterations=2))
    base = ["--data", dataset, "--out", tmp_path / "out", "--preset", preset]
    assert run_cli(base + ["--labeled", "2"], capsys)[0] == 0
    code, err = run_cli(base + ["--labeled", "2"], capsys)  # no --resume: refuse to overwrite
    assert code == 2 and "--resume" in err
    code, err = run_cli(base + ["--labeled", "3", "--resume"], capsys)
    assert code == 2 and "incompatible" in err
    last = tmp_path / "out" / "last.pt"
    good = last.read_bytes()
    last.write_bytes(good[: len(good) // 2])
    code, err = run_cli(base + ["--labeled", "2", "--resume"], capsys)
    assert code == 2 and "last.pt" in err and "not a readable" in err
    assert last.read_bytes() == good[: len(good) // 2]  # nothing overwritten by the failed attempt
    code, err = run_cli(["--data", dataset, "--out", tmp_path / "empty", "--preset", preset,
                         "--labeled", "2", "--resume"], capsys)
    assert code == 2 and "nothing to resume" in err


def test_sigterm_stops_with_a_resumable_checkpoint(dataset, tmp_path):
    """A parent's Cancel (SIGTERM) ends the run after writing last.pt at the last completed iteration."""
    import signal
    import subprocess
    import sys

    preset = write_preset(tmp_path / "p.json", TINY.with_overrides(iterations=10_000))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "CAMLSegmentation"),
               OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "CAMLSegmentationLib.cli", "train", "--data", str(dataset),
                             "--labeled", "2", "--out", str(tmp_path / "run"), "--preset", str(preset),
                             "--progress", "json"], stdout=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("stage") == "train" and event["done"] >= 3:
            break
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    ckpt = read_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["iteration"] >= 3 and "optimizer" in ckpt
    assert not list((tmp_path / "run").glob(".*"))  # no temporary file left behind


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped exception
def test_a_cancel_lost_in_a_finaliser_still_stops_training(dataset, tmp_path):
    """A signal whose Cancelled Python dropped (it landed in a __del__) stops the run at the next
    iteration boundary, with a resumable last.pt, instead of training on to the end."""
    import gc
    import signal

    from CAMLSegmentationLib.progress import Cancelled, install_cancel_handler, restore_handlers

    class SignalsWhenCollected:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # bytecode for the handler to run in, here where it cannot propagate
                pass

    def progress(event):
        if event.stage == "train" and event.done == 2:
            SignalsWhenCollected()
            gc.collect()

    previous = install_cancel_handler(None)
    try:
        with pytest.raises(Cancelled):
            train(TrainConfig(dataset, tmp_path / "run", TINY.with_overrides(iterations=40), labeled=2, seed=1),
                  progress=progress)
    finally:
        restore_handlers(previous)
    assert read_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 2


def test_validation_is_the_predictor_caml_evaluate_runs_on_any_layout(dataset, tmp_path, capsys):
    """One predictor: the Dice that picks best.pt is the Dice `caml evaluate` reports, and evaluate
    reads the generic layout `caml train` reads as well as LA .h5 (here: the same cases as NRRD)."""
    from CAMLSegmentationLib.io.volume import write_image, write_mask
    from CAMLSegmentationLib.training.sources import open_source

    (tmp_path / "val.list").write_text("case004\ncase005\n")
    preset = TINY.with_overrides(iterations=4, val_start=4, val_interval=4)
    train(TrainConfig(dataset, tmp_path / "run", preset, labeled=2, val_list=tmp_path / "val.list", seed=5))
    best = read_checkpoint(tmp_path / "run" / "best.pt")
    val = best["val"]["per_case"]
    # The post-processing is chosen on validation and stored with the weights `caml evaluate` loads.
    chosen = best["val"]["largest_component"]
    assert best["inference"]["largest_component"] is chosen
    assert best["val"]["dice"] == max(best["val"]["dice_as_predicted"], best["val"]["dice_largest_component"])
    assert best["val"]["dice"] == (best["val"]["dice_largest_component"] if chosen
                                   else best["val"]["dice_as_predicted"])
    generic = tmp_path / "generic"
    (generic / "images").mkdir(parents=True)
    (generic / "labels").mkdir()
    source = open_source(dataset)
    for case_id in ("case004", "case005"):
        volume, label = source.read(case_id)
        write_image(volume.array, volume, generic / "images" / f"{case_id}.nrrd")
        write_mask(label, volume, generic / "labels" / f"{case_id}.nrrd")
    for data_root in (dataset, generic):
        out = tmp_path / f"eval-{data_root.name}"
        assert caml(["evaluate", "--data", str(data_root), "--list", str(tmp_path / "val.list"),
                     "--weights", str(tmp_path / "run" / "best.pt"), "--out", str(out), "--progress", "none"]) == 0
        rows = json.loads((out / "metrics.json").read_text())["cases"]
        assert {r["case"]: pytest.approx(val[r["case"]], abs=1e-6) for r in rows} == val
    capsys.readouterr()
    # Effective values, not rules: what the run really used is recorded with it.
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["rampup_length"] == 4.0 and config["split"]["validation"] == ["case004", "case005"]
    assert config["inference"] == {"window": [32, 32, 16], "spacing": None, "normalization": "percentile",
                                   "flip_axes": [0, 1], "threshold": 0.5, "largest_component": False}
    assert read_checkpoint(tmp_path / "run" / "last.pt")["inference"] == config["inference"]


def test_a_preset_can_switch_validation_off_and_the_old_way_still_loads(dataset, tmp_path):
    """al-finetune says ``validate: false`` (#25 item 9) instead of pushing val_start past the end;
    a preset stored with the old values still loads and still never validates."""
    from CAMLSegmentationLib.training.presets import TrainingPreset as Preset
    from CAMLSegmentationLib.training.presets import load_preset

    finetune = load_preset("al-finetune")
    assert finetune.validate is False and finetune.val_start == Preset().val_start
    (tmp_path / "val.list").write_text("case004\n")
    off = TINY.with_overrides(iterations=2, val_start=1, val_interval=1, validate=False)
    train(TrainConfig(dataset, tmp_path / "off", Preset.from_dict(json.loads(json.dumps(off.to_dict()))),
                      labeled=2, val_list=tmp_path / "val.list", seed=3))
    assert not (tmp_path / "off" / "best.pt").exists()
    assert all("val_dice" not in r for r in read_checkpoint(tmp_path / "off" / "last.pt")["history"])
    old = dict(finetune.to_dict(), val_start=100000, val_interval=100000)
    del old["validate"]
    assert Preset.from_dict(old).val_start == 100000
    on = TINY.with_overrides(iterations=2, val_start=1, val_interval=1)
    train(TrainConfig(dataset, tmp_path / "on", on, labeled=2, val_list=tmp_path / "val.list", seed=3))
    assert (tmp_path / "on" / "best.pt").exists()


def test_the_resume_only_keys_are_what_last_pt_adds_to_a_model_file(dataset, tmp_path):
    """One definition (#25 item 9): what the trainer writes only to continue is what a version drops."""
    from CAMLSegmentationLib.training.trainer import RESUME_ONLY_KEYS

    train(TrainConfig(dataset, tmp_path / "run", TINY.with_overrides(iterations=1), labeled=2, seed=3))
    last = read_checkpoint(tmp_path / "run" / "last.pt")
    legacy = {"rng", "sampler"}
    written = set(last) - {"format", "format_version", "model", "iteration", "network", "preset", "inference",
                           "rampup_length", "split", "data_root", "seed", "supervised_only", "world_size"}
    assert written == set(RESUME_ONLY_KEYS) - legacy

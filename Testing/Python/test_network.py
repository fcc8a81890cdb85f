"""The CAML network matches the official CAML3d_v1 in structure, names and behaviour."""

from __future__ import annotations

import pytest
import torch
from CAMLSegmentationLib.model.checkpoint import (
    CheckpointError,
    load_caml_network,
    load_sub_model,
    read_checkpoint,
    release_checkpoint,
    save_checkpoint,
)
from CAMLSegmentationLib.model.network import CAMLNet, NetworkConfig, SubModel, count_parameters


def official_key_set() -> set:
    """The state_dict keys of the official CAML3d_v1, enumerated from its architecture description."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = set()

    def conv_block(prefix, stages):
        for s in range(stages):
            keys.update({f"{prefix}.conv.{3 * s}.weight", f"{prefix}.conv.{3 * s}.bias"})
            keys.update(f"{prefix}.conv.{3 * s + 1}.{b}" for b in bn)

    def sampling(prefix, conv_index):
        keys.update({f"{prefix}.conv.{conv_index}.weight", f"{prefix}.conv.{conv_index}.bias"})
        keys.update(f"{prefix}.conv.{conv_index + 1}.{b}" for b in bn)

    for enc in ("encoder1", "encoder2"):
        for name, stages in [("one", 1), ("two", 2), ("three", 3), ("four", 3), ("five", 3)]:
            conv_block(f"{enc}.block_{name}", stages)
        for name in ("one", "two", "three", "four"):
            sampling(f"{enc}.block_{name}_dw", 0)
    for att in ("intra_attention", "inter_attention"):
        p = f"encoder2.{att}.encoder_layers"
        keys.update({f"{p}.self_attn.in_proj_weight", f"{p}.self_attn.in_proj_bias",
                     f"{p}.self_attn.out_proj.weight", f"{p}.self_attn.out_proj.bias",
                     f"{p}.linear1.weight", f"{p}.linear1.bias", f"{p}.linear2.weight", f"{p}.linear2.bias",
                     f"{p}.norm1.weight", f"{p}.norm1.bias", f"{p}.norm2.weight", f"{p}.norm2.bias"})
    for dec, up_conv in (("decoder1", 0), ("decoder2", 1)):  # ConvTranspose3d vs Upsample + Conv3d
        for name, stages in [("six", 3), ("seven", 3), ("eight", 2), ("nine", 1)]:
            conv_block(f"{dec}.block_{name}", stages)
        for name in ("five", "six", "seven", "eight"):
            sampling(f"{dec}.block_{name}_up", up_conv)
        keys.update({f"{dec}.out_conv.weight", f"{dec}.out_conv.bias"})
    for head in ("projection_head1", "prediction_head1", "projection_head2", "prediction_head2"):
        keys.update({f"{head}.0.weight", f"{head}.0.bias", f"{head}.3.weight", f"{head}.3.bias"})
        keys.update(f"{head}.1.{b}" for b in bn)
    return keys


def test_parameter_counts_match_official():
    model = CAMLNet(NetworkConfig())
    assert count_parameters(model) == 20_128_836
    assert len(model.state_dict()) == 470
    assert count_parameters(SubModel(NetworkConfig(), "v")) == 9_448_866


def test_state_dict_keys_match_official():
    assert set(CAMLNet().state_dict()) == official_key_set()


def test_cma_is_identity_in_eval_mode():
    torch.manual_seed(0)
    model = CAMLNet(NetworkConfig(base_filters=4))
    x = torch.randn(3, 32, 2, 2, 2)  # 8 * base_filters channels at stage four
    enc = model.encoder2
    enc.eval()
    assert torch.equal(enc.inter_attention(enc.intra_attention(x)), x)
    enc.train()
    assert not torch.allclose(enc.inter_attention(enc.intra_attention(x)), x)
    # In eval mode a sample's prediction does not depend on the rest of the batch.
    model.eval()
    vol = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        both = model(vol)[1]
        alone = model(vol[:1])[1]
    assert torch.allclose(both[:1], alone, atol=1e-5)


def test_inter_sample_attention_mixes_samples_in_training():
    torch.manual_seed(0)
    model = CAMLNet(NetworkConfig(base_filters=4, dropout=0.0))
    model.train()
    vol = torch.randn(2, 1, 16, 16, 16)
    f1 = model.encoder2(vol)[3]
    vol2 = vol.clone()
    vol2[1] = torch.randn(1, 16, 16, 16)
    f2 = model.encoder2(vol2)[3]
    # Sample 0 is unchanged, yet its stage-four features change because sample 1 did.
    assert not torch.allclose(f1[0], f2[0])


def test_forward_shapes():
    model = CAMLNet(NetworkConfig(base_filters=4))
    model.train()
    out = model(torch.randn(2, 1, 32, 16, 16))
    assert [tuple(t.shape) for t in out] == [(2, 2, 32, 16, 16)] * 2 + [(2, 4, 32, 16, 16)] * 2


def test_plain_state_dict_and_own_checkpoint_load(tmp_path):
    torch.manual_seed(1)
    model = CAMLNet(NetworkConfig(base_filters=4)).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        expected_v = model(x)[0]
    plain = tmp_path / "iter_15000.pth"
    torch.save(model.state_dict(), plain)  # what the official code saves
    ddp = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, ddp)
    own = tmp_path / "own.pt"
    save_checkpoint(own, {"model": model.state_dict(), "network": model.config.to_dict()})
    half = tmp_path / "half.pt"
    save_checkpoint(half, {"model": {k: v.half() if v.is_floating_point() else v
                                     for k, v in model.state_dict().items() if k.startswith(("encoder1", "decoder1"))},
                           "network": model.config.to_dict()})
    for path in (plain, ddp, own):
        dual, _ = load_caml_network(path)
        with torch.no_grad():
            assert torch.equal(dual.eval()(x)[0], expected_v)
    for path in (plain, own, half):
        v, _ = load_sub_model(path, "v")
        with torch.no_grad():
            assert torch.allclose(v.eval()(x), expected_v, atol=1e-2 if path == half else 0)


def test_wrong_architecture_and_corrupt_files_are_refused(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(CheckpointError, match="another architecture"):
        load_sub_model(other)
    truncated = tmp_path / "truncated.pth"
    torch.save(CAMLNet(NetworkConfig(base_filters=4)).state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_caml_network(truncated)
    only_v = tmp_path / "only_v.pth"
    torch.save(SubModel(NetworkConfig(base_filters=4)).state_dict(), only_v)
    load_sub_model(only_v, "v")
    with pytest.raises(CheckpointError, match="missing"):
        load_caml_network(only_v)


def test_release_keeps_v_and_a_only_and_predicts_the_same(tmp_path):
    torch.manual_seed(2)
    model = CAMLNet(NetworkConfig(base_filters=4)).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        expected = {"v": model(x)[0], "a": model(x)[1]}
    trained = tmp_path / "best.pt"
    preset = {"name": "tiny", "patch_size": [16, 16, 16], "spacing": [1.25, 1.25, 1.25]}
    save_checkpoint(trained, {"model": model.state_dict(), "network": model.config.to_dict(), "preset": preset,
                              "iteration": 250, "val": {"dice": 0.5}, "optimizer": {"state": torch.zeros(10**5)}})
    full, half = tmp_path / "release.pt", tmp_path / "release16.pt"
    release_checkpoint(trained, full)
    release_checkpoint(trained, half, half=True)
    stored = read_checkpoint(half)
    assert set(stored["model"]) == {k for k in model.state_dict() if k.startswith(("encoder", "decoder"))}
    assert stored["preset"] == preset and stored["trained"]["iteration"] == 250
    assert {v.dtype for v in stored["model"].values() if v.is_floating_point()} == {torch.float16}
    assert "optimizer" not in stored and "optimizer" not in read_checkpoint(full)
    assert half.stat().st_size < 0.6 * full.stat().st_size < 0.6 * trained.stat().st_size
    for which in ("v", "a"):
        sub, _ = load_sub_model(full, which)
        sub16, _ = load_sub_model(half, which)
        with torch.no_grad():
            assert torch.equal(sub.eval()(x), expected[which])
            assert torch.allclose(sub16.eval()(x), expected[which], atol=2e-2)
    with pytest.raises(CheckpointError, match="missing"):  # the projection heads are not shipped
        load_caml_network(full)
    torch.save(SubModel(NetworkConfig(base_filters=4)).state_dict(), tmp_path / "only_v.pth")
    with pytest.raises(CheckpointError, match="missing"):  # a V-only file cannot make a V+A release
        release_checkpoint(tmp_path / "only_v.pth", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()

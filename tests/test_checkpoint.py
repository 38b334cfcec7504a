"""Checkpoint loading: every published wrapping, the layout quirks, and loud failures."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import FIXTURES
from sparsemat.engine.model import CheckpointError, SparseMat
from sparsemat.engine.model.checkpoint import SPCONV1_OVERSIZED


@pytest.fixture(scope="module")
def published(seed1_checkpoint):
    return torch.load(seed1_checkpoint, weights_only=True)


def load(tmp_path, payload) -> SparseMat:
    path = tmp_path / "ckpt.pth"
    torch.save(payload, path)
    return SparseMat.from_checkpoint(str(path))


def test_spec_keys_are_all_consumed(published):
    spec = json.loads((FIXTURES / "spec.json").read_text())
    assert list(published) == [key for key, _, _ in spec]
    ours = SparseMat().state_dict()
    unused = {key for key in published if key not in ours}
    assert unused and all(key.startswith("lpn.aux_head.") for key in unused)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model_state_dict", "module_prefix"])
def test_wrappings_load_the_same_weights(tmp_path, published, seed1_model, wrap):
    payload = {
        "plain": published,
        "state_dict": {"state_dict": published},
        "model_state_dict": {"model_state_dict": published, "epoch": 3},
        "module_prefix": {"module." + key: value for key, value in published.items()},
    }[wrap]
    model = load(tmp_path, payload)
    for key, value in seed1_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_sparse_weights_are_read_as_spconv1_reads_them(published, seed1_model):
    state = seed1_model.state_dict()
    conv2 = published["shm.backbone.conv2.weight"]  # [kh, kw, in, out]
    assert torch.equal(state["shm.backbone.conv2.weight"][5], conv2[1, 2])
    for key in SPCONV1_OVERSIZED:
        assert published[key].shape == (3, 3, 128, 64)
        first = published[key].reshape(-1)[: 9 * 64 * 64].view(9, 64, 64)
        assert torch.equal(state[key], first)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*nothing.pth"):
        SparseMat.from_checkpoint(str(tmp_path / "nothing.pth"))


def test_truncated_file_is_an_error(tmp_path, seed1_checkpoint):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(seed1_checkpoint.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="broken.pth cannot be read"):
        SparseMat.from_checkpoint(str(broken))


def test_missing_key_is_named(tmp_path, published):
    partial = dict(published)
    del partial["shm.decoder.conv_up3.0.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys: shm\.decoder\.conv_up3\.0\.weight"):
        load(tmp_path, partial)


def test_wrong_shape_is_named(tmp_path, published):
    bad = dict(published)
    bad["lpn.decoder.p0x.layers.0.weight"] = torch.zeros(1, 3, 1, 1)
    with pytest.raises(CheckpointError, match=r"wrong shapes: lpn\.decoder\.p0x\.layers\.0\.weight \(1, 3, 1, 1\)"):
        load(tmp_path, bad)


def test_unexpected_key_is_named(tmp_path, published):
    extra = {**published, "shm.head.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"unexpected keys: shm\.head\.weight"):
        load(tmp_path, extra)


def test_non_finite_weights_are_refused(tmp_path, published):
    bad = dict(published)
    bad["shm.backbone.bn1.running_var"] = torch.full((64,), float("nan"))
    with pytest.raises(CheckpointError, match="non-finite values in shm.backbone.bn1.running_var"):
        load(tmp_path, bad)


def test_not_a_state_dict(tmp_path):
    with pytest.raises(CheckpointError, match="holds a list"):
        load(tmp_path, [1, 2, 3])


@pytest.mark.parametrize("with_training_state", [False, True], ids=["plain", "with optimizer state"])
def test_a_trained_model_saves_in_the_published_layout_and_loads_back(tmp_path, seed1_checkpoint, with_training_state):
    """What a training run writes: the spec's keys, shapes and dtypes in its order (so the published
    code loads it), the tensors inference never reads kept from the checkpoint it started from, and
    every tensor of the trained model back exactly through --checkpoint's loader."""
    from sparsemat.engine.model.checkpoint import published_state, read_published, save_published

    base, record = read_published(str(seed1_checkpoint))
    assert record is None
    model = SparseMat.from_checkpoint(str(seed1_checkpoint))
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.01)
    path = tmp_path / "trained.pth"
    extra = {"step": 7, "optimizer": {"state": {}, "param_groups": []}} if with_training_state else None
    save_published(str(path), published_state(model, base), extra)
    assert read_published(str(path))[1] == extra
    assert [p.name for p in tmp_path.iterdir()] == ["trained.pth"]  # no temporary left behind

    payload = torch.load(path, weights_only=True)
    saved = payload["state_dict"] if with_training_state else payload
    spec = json.loads((FIXTURES / "spec.json").read_text())
    assert [(key, list(value.shape), str(value.dtype).removeprefix("torch.")) for key, value in saved.items()] == \
        [(key, shape, dtype) for key, shape, dtype in spec]
    for key, value in saved.items():
        if key.startswith("lpn.aux_head."):
            assert torch.equal(value, base[key]), key
    for key in SPCONV1_OVERSIZED:  # the part spconv 1.x never reads stays as it was
        read = model.state_dict()[key].numel()
        assert torch.equal(saved[key].reshape(-1)[read:], base[key].reshape(-1)[read:])
        assert not torch.equal(saved[key].reshape(-1)[:read], base[key].reshape(-1)[:read])
    reloaded = SparseMat.from_checkpoint(str(path)).state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded[key], value), key

"""Checkpoint loading: the published SparseMat format.

The published file is a state_dict (possibly under ``state_dict`` or
``model_state_dict``, keys possibly prefixed ``module.``) whose sparse
convolution weights are in spconv 1.x layout ``[kh, kw, in, out]``. The filter
below maps it onto our modules, where a sparse weight is ``(kh * kw, in, out)``.
Anything missing, unexpected or of the wrong shape is an error naming the file
and the first offending keys: a partial load would give a silently wrong matte.
``save_published`` writes the other way, so a trained model loads in the published code too.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from sparsemat.plugin.files import replacing
from ..validation import checkpoint_problem

# Keys the published checkpoint carries that inference never uses (a training-only head).
UNUSED_PREFIXES = ("lpn.aux_head.",)

# Published layer1.0 convolutions are declared with 128 input channels but receive 64.
# spconv 1.x views a weight as (-1, in_actual, out) and takes slice k for offset k, so
# it only ever reads the first 3*3*64*64 numbers; we read them the same way.
SPCONV1_OVERSIZED = ("shm.backbone.layer1.0.conv1.weight", "shm.backbone.layer1.0.downsample.0.weight")

# Where a checkpoint written by ``sparsemat train`` or ``finetune`` keeps its run's record.
TRAINING_RECORD = "sparsemat_training"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


def _read(path: str) -> dict:
    problem = checkpoint_problem(path)
    if problem:
        raise CheckpointError(problem)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, pickled code
        # torch's own text suggests loading with weights_only=False, which runs whatever code the
        # file holds: never pass that advice on.
        raise CheckpointError(f"checkpoint {path} cannot be read: not a PyTorch checkpoint, truncated, or holding "
                              f"code rather than weights only ({type(exc).__name__})") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a state_dict")
    return payload


def _unwrap(payload: dict) -> dict:
    """The state_dict, unwrapped and without ``module.`` prefixes."""
    for wrapper in ("state_dict", "model_state_dict"):
        if isinstance(payload.get(wrapper), dict):
            payload = payload[wrapper]
            break
    return OrderedDict((k[len("module."):] if k.startswith("module.") else k, v) for k, v in payload.items())


def filter_published(state: dict, model: torch.nn.Module) -> dict:
    """Map a published state_dict onto ``model``'s parameter layout."""
    expected = model.state_dict()
    out = OrderedDict()
    for key, value in state.items():
        if key.startswith(UNUSED_PREFIXES):
            continue
        target = expected.get(key)
        if key.startswith("shm.") and value.dim() == 4 and target is not None and target.dim() == 3:
            kh, kw, cin, cout = value.shape
            if key in SPCONV1_OVERSIZED and cin > target.shape[1]:
                value = value.reshape(-1)[: target.numel()].view(target.shape)
            else:
                value = value.reshape(kh * kw, cin, cout)
        out[key] = value
    return out


def _check(path: str, state: dict, model: torch.nn.Module) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
        if items:
            more = f" and {len(items) - 5} more" if len(items) > 5 else ""
            problems.append(f"{label}: {', '.join(items[:5])}{more}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not match the SparseMat model; " + "; ".join(problems))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"checkpoint {path} has non-finite values in {', '.join(bad[:5])}")


def load_into(model: torch.nn.Module, path: str) -> None:
    """Load a published-format checkpoint into ``model`` (strict; raises CheckpointError)."""
    load_state(model, _unwrap(_read(path)), path)


def load_state(model: torch.nn.Module, state: dict, path: str) -> None:
    """``load_into`` for a state_dict already read from ``path`` (``read_published``'s)."""
    state = filter_published(state, model)
    _check(path, state, model)
    model.load_state_dict(state, strict=True)


def published_state(model: torch.nn.Module, base: dict) -> OrderedDict:
    """``model``'s tensors in the published layout, keys in the order of ``base`` (the published
    state_dict it started from, unwrapped): sparse weights as spconv 1.x ``[kh, kw, in, out]``,
    the oversized layer1.0 weights as ``base``'s with the part spconv reads replaced, and the
    keys inference never uses (the prior's training head) kept from ``base``."""
    ours = model.state_dict()
    out = OrderedDict()
    for key, original in base.items():
        if key not in ours:
            out[key] = original.clone()
            continue
        value = ours[key].detach().cpu()
        if key.startswith("shm.") and original.dim() == 4 and value.dim() == 3:
            if key in SPCONV1_OVERSIZED and original.shape[2] > value.shape[1]:
                flat = original.clone().reshape(-1)
                flat[: value.numel()] = value.reshape(-1)
                value = flat.view(original.shape)
            else:
                value = value.reshape(original.shape)
        out[key] = value.to(original.dtype).clone()
    return out


def read_published(path: str) -> tuple[OrderedDict, dict | None]:
    """A published-format checkpoint's state_dict, unwrapped, and the training run's record that
    ``save_published`` kept beside it (None in a plain checkpoint); raises CheckpointError."""
    payload = _read(path)
    record = payload.get(TRAINING_RECORD) if isinstance(payload.get("state_dict"), dict) else None
    return _unwrap(payload), record if isinstance(record, dict) else None


def save_published(path: str, state: dict, record: dict | None = None) -> None:
    """Write ``state`` (a published-layout state_dict) to ``path`` atomically: a plain state_dict,
    or ``{"state_dict": state, TRAINING_RECORD: record}`` when there is more to keep (a training
    run's optimizer and step), which both the published loader's ``state_dict`` unwrapping and
    ours read."""
    payload = dict(state) if not record else {"state_dict": state, TRAINING_RECORD: record}
    with replacing(path) as temporary:
        torch.save(payload, temporary)

"""Mixed-precision training of the rotated detector (mmengine's `AmpOptimWrapper`).

The wrapper autocasts the whole forward, but mmrotate's box code goes through numpy and OpenCV (`qbox2rbox`
in the RPN's box decoding), which take neither bf16 nor fp16 tensors, and half-precision box regression and
IoUs lose the sub-pixel accuracy rotated boxes need. As mmdet 2.x's `force_fp32` did, the box-level work runs
in float32 — the RPN's proposal decoding and loss, and the whole RoI head (RoIAlignRotated on float32
features, its two small FC layers, targets and losses) — while the backbone, the FPN and the RPN's
convolutions, nearly all of the compute, run in half precision.
"""

from __future__ import annotations

import functools

import torch

from domainmona.devices import amp_dtype, needs_loss_scaling

# (head attribute of the detector, methods that run in float32)
FLOAT32_METHODS = (("rpn_head", ("predict_by_feat", "loss_by_feat")), ("roi_head", ("loss", "predict")))


def _to_float32(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float32:
        return value.float()
    if type(value) in (list, tuple):  # exact types: configs (dict subclasses) and data samples pass as they are
        return type(value)(_to_float32(v) for v in value)
    return value


def _in_float32(method):
    @functools.wraps(method)
    def run(*args, **kwargs):
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return method(*_to_float32(args), **{k: _to_float32(v) for k, v in kwargs.items()})

    run.__domainmona_float32__ = True
    return run


def keep_box_work_in_float32(detector: torch.nn.Module) -> torch.nn.Module:
    """Make the detector's box-level methods (FLOAT32_METHODS) run in float32 under autocast; idempotent."""
    for head_name, methods in FLOAT32_METHODS:
        head = getattr(detector, head_name, None)
        for name in methods if head is not None else ():
            method = getattr(head, name)
            if not getattr(method, "__domainmona_float32__", False):
                setattr(head, name, _in_float32(method))
    return detector


def amp_optim_wrapper(optim_wrapper: dict, device: torch.device | str, enabled: bool = True) -> dict:
    """The training config's `optim_wrapper` with mixed precision where `amp_dtype` allows it."""
    dtype = amp_dtype(device, enabled)
    if dtype is None:
        return optim_wrapper
    # bf16 needs no loss scaling: a fixed scale of 1 makes the wrapper's scaler a no-op
    return {**optim_wrapper, "type": "AmpOptimWrapper", "dtype": str(dtype).removeprefix("torch."),
            "loss_scale": "dynamic" if needs_loss_scaling(dtype) else 1.0}

"""Where commands compute and in what precision, one rule for every pipeline.

Device: the process's CUDA device when one is visible (cuda:LOCAL_RANK under torchrun), else the CPU;
`CUDA_VISIBLE_DEVICES=` (empty) forces the CPU. Training precision on CUDA: bf16 where the GPU supports it
(float32's range, so no loss scaling), else fp16 with dynamic loss scaling; full precision on other devices
(CPU autocast is slower than float32 for these networks) or when the user turns it off (`--no-amp`).
Inference stays in float32, where the merged/fused fast paths are checked against their references.
"""

from __future__ import annotations

import contextlib
import os

import torch


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def amp_dtype(device: torch.device | str, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype for training on `device`, or None for full precision."""
    if not enabled or torch.device(device).type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def needs_loss_scaling(dtype: torch.dtype | None) -> bool:
    """fp16 gradients underflow without loss scaling; bf16 and float32 ones do not."""
    return dtype == torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype` on `device`'s type; a no-op context for None."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A loss scaler that is enabled only where `dtype` needs one (a disabled scaler passes steps through)."""
    return torch.amp.GradScaler(device.type, enabled=needs_loss_scaling(dtype))


def clipped_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 params: list[torch.Tensor], max_norm: float) -> None:
    """Backward, unscale, clip the gradient norm of `params` to `max_norm` and step: the training step of every
    hand-written loop (a disabled scaler makes it the plain float32 step)."""
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    scaler.step(optimizer)
    scaler.update()


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict | None) -> None:
    """Continue a saved loss scale; a run resumed with another precision (another GPU, `--no-amp`) starts a
    fresh scaler instead of failing on the empty state of a disabled one."""
    if scaler.is_enabled() and state:
        scaler.load_state_dict(state)


def describe(dtype: torch.dtype | str | None) -> str:
    return "float32" if dtype is None else f"mixed precision ({str(dtype).removeprefix('torch.')})"

"""Checks for numeric command-line options, and options every train command shares.

Integers use typer's own ranges (`min=`); floats also need `finite`, because click's FloatRange lets NaN
through (every comparison with NaN is false) and has no upper bound by default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Optional

import typer

from domainmona.errors import UserError


def finite(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Callable[[Optional[float]], Optional[float]]:
    """A typer callback accepting a finite float within [low, high] (open ends when asked); None passes."""

    def check(value: Optional[float]) -> Optional[float]:
        if value is None:
            return value
        if not math.isfinite(value):
            raise typer.BadParameter(f"{value} is not a finite number")
        if low is not None and (value <= low if low_open else value < low):
            raise typer.BadParameter(f"{value} must be {'>' if low_open else '>='} {low}")
        if high is not None and (value >= high if high_open else value > high):
            raise typer.BadParameter(f"{value} must be {'<' if high_open else '<='} {high}")
        return value

    return check


def shown(value: Any, limit: int = 60, plain: bool = False) -> str:
    """``repr(value)`` (``str`` if ``plain``) for a message, cut to ``limit`` characters: a message never holds
    an unbounded value."""
    text = str(value) if plain else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def available_memory() -> int:
    """Bytes of memory this process may still use: the kernel's MemAvailable, bounded by a cgroup limit
    (containers), or the physical memory where /proc is missing."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
        available = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemAvailable")))
        available *= 1024
    except (OSError, StopIteration, ValueError):
        available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit.isdigit():
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def _size(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1024
    return ""


def check_memory(flag: str, value: Any, need: float, what: str) -> None:
    """Refuse, before any buffer is made, a ``flag`` value whose buffers (``what``, ``need`` bytes: a lower
    bound) cannot fit in the memory available: allocating them would only fail minutes later, or swap."""
    available = available_memory()
    if need > available:
        raise UserError(f"{flag} {shown(value)}: {what} would need {_size(need)}, more than the "
                        f"{_size(available)} of memory available")


def window_bytes(size: int, bands: int = 1, batch: int = 1, dims: int = 2, itemsize: int = 4) -> float:
    """The memory a batch of windows takes (``size`` pixels a side, ``dims`` sides; float32 by default)."""
    return float(size) ** dims * bands * batch * itemsize


positive = finite(0.0, low_open=True)  # learning rates, HU spans, ...
probability = finite(0.0, 1.0)  # score and IoU thresholds
fraction = finite(0.0, 1.0, high_open=True)  # sliding-window overlaps


def recompute_option() -> Optional[bool]:
    """`--adapter-recompute/--no-adapter-recompute` of every train command (domainmona.adapters.memory); None
    when neither is given, so a `--config` value stands and either flag overrides it."""
    return typer.Option(None, "--adapter-recompute/--no-adapter-recompute", show_default=False,
                        help="Adapters keep only their input for backward and recompute the rest (less memory, "
                             "a little more time; default: on).")


def checkpoint_blocks_option() -> bool:
    """`--checkpoint-blocks` of every train command (domainmona.adapters.memory.set_block_checkpointing)."""
    return typer.Option(False, "--checkpoint-blocks",
                        help="Recompute the frozen backbone's blocks in backward (its own checkpointing, adapters "
                             "inside): least memory, about a third more time.")


def amp_option() -> Optional[bool]:
    """`--amp/--no-amp` of every train command (the rule: domainmona.devices); None when neither is given, so
    a `--config` value stands and either flag overrides it."""
    return typer.Option(None, "--amp/--no-amp", show_default=False,
                        help="Mixed precision on CUDA: bf16, else fp16 with loss scaling (default: on). No effect "
                             "on the CPU.")


def pretrained_option(what: str = "backbone") -> Optional[Path]:
    """`--pretrained` of the 2D train commands: the layouts `domainmona.adapters.pretrained` converts."""
    return typer.Option(None, "--pretrained", help=f"Pretrained {what} weights, in the layout they ship in (timm, "
                        "torchvision, efficientnet_pytorch, OpenMMLab, Microsoft Swin, MAE, DINO, MoCo, Prithvi, "
                        "SAM); loaded, missing and unexpected counts are printed.")


def shots_option() -> Optional[int]:
    """`--shots K` of `train dota|star` and `tile`: one meaning, one sampler (domainmona.tiling.select_shots)."""
    return typer.Option(None, "--shots", min=1, help="Seeded K-shot subset: K labelled objects per class, exactly "
                        "K where whole patches allow it (objects of classes already full are left out).")


def method_choice(*extra: str) -> Any:
    """A `Literal` of the registered adapter methods (`domainmona.adapters.registry.method_names`, read from the
    method files without importing torch) and `extra`: as an option's type, typer's choices, check and help."""
    from domainmona.adapters.registry import method_names

    return Literal[(*method_names(), *extra)]


def adapter_option(default: Optional[str], help: str) -> Optional[str]:
    """`--adapter` of every train command; its type, `method_choice()`, gives the choices."""
    return typer.Option(default, "--adapter", help=help)


def backbone_option(default: Optional[str], dims: int = 2, what: str = "Backbone", *aliases: str) -> Any:
    """`--backbone NAME`: a registered backbone of `dims` dimensions (0: any; domainmona.adapters.backbones, names
    read without torch) or, outside 3D, `timm:NAME`; anything else is refused in one line."""
    from domainmona.adapters.backbones import backbone_names, check_backbone_name

    def check(value: Optional[str]) -> Optional[str]:
        try:
            return value if value is None else check_backbone_name(value, dims or None)
        except UserError as exc:
            raise typer.BadParameter(str(exc)) from None

    timm_help = " or timm:NAME (any timm model with feature maps)" if dims != 3 else ""
    return typer.Option(default, "--backbone", *(aliases or ("-b",)), callback=check, metavar="NAME",
                        help=f"{what}: {', '.join(backbone_names(dims or None))}{timm_help}.")


def config_option(help: str = "YAML settings over the defaults (keys: see --print-config); flags win.") -> Any:
    """`--config FILE` of every train command (domainmona.settings)."""
    return typer.Option(None, "--config", help=help)


def print_config_option() -> bool:
    """`--print-config` of every train command: the resolved settings as YAML, then exit (domainmona.settings)."""
    return typer.Option(False, "--print-config", help="Print the resolved settings (defaults, --config, flags) as "
                        "YAML and exit without writing anything.")


def adapter_opt_option() -> Any:
    """`--adapter-opt KEY=VALUE` of every train command, checked against the method's config dataclass."""
    return typer.Option(None, "--adapter-opt", metavar="KEY=VALUE", help="An option of the adapter method's config "
                        "(e.g. inner_dim=32 for mona); repeatable.")


def side_option() -> Any:
    """`--side NAME` of every 2D train command: what makes a plain ViT's pyramid (domainmona.adapters.side,
    names read without torch)."""
    from domainmona.adapters.side import DEFAULT_SIDE, FROZEN_VIT_METHOD, SIDES

    def check(value: Optional[str]) -> Optional[str]:
        if value is not None and value not in SIDES:
            raise typer.BadParameter(f"unknown side network '{value}' (choose from: {', '.join(SIDES)})")
        return value

    return typer.Option(None, "--side", metavar="NAME", callback=check,
                        help=f"Plain ViTs only: what makes their feature pyramid: {', '.join(SIDES)} (default "
                             f"{DEFAULT_SIDE}). With hst or vit-comer the ViT stays frozen (--adapter "
                             f"{FROZEN_VIT_METHOD}) unless --adapter names an in-ViT method to train with it.")


def side_opt_option() -> Any:
    """`--side-opt KEY=VALUE` of every 2D train command: the side network's preset or constructor options."""
    return typer.Option(None, "--side-opt", metavar="KEY=VALUE", help="An option of the side network (e.g. "
                        "preset=dense-m for hst, with_cp=true for vit-comer); repeatable.")


Runtime = Literal["torch", "onnx"]  # what runs the network in the predict commands (domainmona.export)


def runtime_option() -> Any:
    """`--runtime torch|onnx` of `tile-predict`, `segment-ct predict` and `test dota|star`."""
    return typer.Option("torch", "--runtime", help="torch: the checkpoint's network; onnx: --model's file (from "
                        "'domainmona export' of the same checkpoint) in onnxruntime, its CUDA provider when present.")


def onnx_model_option() -> Optional[Path]:
    """`--model MODEL.onnx`, with `--runtime onnx`."""
    return typer.Option(None, "--model", help="With --runtime onnx: the ONNX file 'domainmona export' wrote from "
                        "--checkpoint (its SHA-256 is checked).")

"""Checks for numeric command-line options, and options every train command shares.

Integers use typer's own ranges (`min=`); floats also need `finite`, because click's FloatRange lets NaN
through (every comparison with NaN is false) and has no upper bound by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, Optional

import typer


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


positive = finite(0.0, low_open=True)  # learning rates, HU spans, ...
probability = finite(0.0, 1.0)  # score and IoU thresholds
fraction = finite(0.0, 1.0, high_open=True)  # sliding-window overlaps


def recompute_option() -> bool:
    """`--adapter-recompute/--no-adapter-recompute` of every train command (domainmona.adapters.memory)."""
    return typer.Option(True, "--adapter-recompute/--no-adapter-recompute",
                        help="Adapters keep only their input for backward and recompute the rest (less memory, "
                             "a little more time).")


def checkpoint_blocks_option() -> bool:
    """`--checkpoint-blocks` of every train command (domainmona.adapters.memory.set_block_checkpointing)."""
    return typer.Option(False, "--checkpoint-blocks",
                        help="Recompute the frozen backbone's blocks in backward (its own checkpointing, adapters "
                             "inside): least memory, about a third more time.")


def amp_option() -> bool:
    """`--amp/--no-amp` of every train command (the rule: domainmona.devices)."""
    return typer.Option(True, "--amp/--no-amp", help="Mixed precision on CUDA: bf16, else fp16 with loss scaling. "
                                                      "No effect on the CPU.")


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

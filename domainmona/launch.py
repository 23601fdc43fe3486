"""Multi-GPU training: re-run the current command under torchrun, one process per GPU.

Used by `train dota|star`, `segment-ct train` and `tile-predict` when `--gpus N` > 1 and the process was not
started by torchrun itself (no LOCAL_RANK). The children run the very same command line; rank 0 prints the
result. Started by torchrun directly (several machines: `--nnodes`, `--node-rank`, `--rdzv-endpoint`), a
command skips the relaunch and joins torchrun's processes as they are.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from datetime import timedelta

from domainmona.errors import UserError


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def join_process_group(timeout: timedelta) -> tuple[int, int]:
    """(rank, world size) after joining torchrun's process group over gloo, or (0, 1) outside torchrun.

    gloo even on GPUs: commands that share work without sharing gradients exchange small Python objects
    only. ``timeout``: how long a collective may wait for the slowest process."""
    if not under_torchrun():
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timeout)
        atexit.register(leave_process_group)
    return dist.get_rank(), dist.get_world_size()


def leave_process_group() -> None:
    """Destroy the default process group while the interpreter is whole. Left to interpreter shutdown, gloo's
    worker threads may drop tensors after Python is gone and the process aborts (SIGABRT, "terminate called
    without an active exception"; pytorch/pytorch#190489) although its work was done."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def relaunch_under_torchrun(gpus: int, what: str = "training") -> None:
    """Run `python -m domainmona.cli <same arguments>` on `gpus` processes; a failure becomes a UserError."""
    import torch

    if torch.cuda.is_available() and gpus > torch.cuda.device_count():
        raise UserError(f"--gpus {gpus}: only {torch.cuda.device_count()} CUDA device(s) visible")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
               "-m", "domainmona.cli", *sys.argv[1:]]
    if subprocess.run(command).returncode != 0:
        raise UserError(f"{what} on {gpus} processes under torchrun failed (see the log above)")

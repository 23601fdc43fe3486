"""Multi-GPU training: re-run the current command under torchrun, one process per GPU.

Used by `train dota|star` and `segment-ct train` when `--gpus N` > 1 and the process was not started by
torchrun itself (no LOCAL_RANK). The children run the very same command line; rank 0 prints the result.
"""

from __future__ import annotations

import os
import subprocess
import sys

from domainmona.errors import UserError


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def relaunch_under_torchrun(gpus: int) -> None:
    """Run `python -m domainmona.cli <same arguments>` on `gpus` processes; a failure becomes a UserError."""
    import torch

    if torch.cuda.is_available() and gpus > torch.cuda.device_count():
        raise UserError(f"--gpus {gpus}: only {torch.cuda.device_count()} CUDA device(s) visible")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
               "-m", "domainmona.cli", *sys.argv[1:]]
    if subprocess.run(command).returncode != 0:
        raise UserError(f"training on {gpus} processes under torchrun failed (see the log above)")

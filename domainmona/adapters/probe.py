"""`domainmona adapters probe`: what fits a device, measured. Each setting (method, adapter recomputation, block
checkpointing, AMP) runs one real training step (forward, backward, AdamW) of a randomly initialised backbone
in a fresh process, so that rows do not share allocator caches or peak-memory marks.

Peak memory: on CUDA `max_memory_allocated` over the first step (weights, activations, gradients, optimizer
state); on CPU the peak rise of anonymous resident memory, sampled, from before the model is built to the end
of that step (the same things). Step time:
the median of the timed steps after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from domainmona.adapters.backbones import get_backbone
from domainmona.errors import UserError

SIZE_MULTIPLE = 32  # Swin: patch 4 and three 2x downsamplings; SwinUNETR: inputs divisible by 32
MAX_SIZE = {"2d": 8192, "3d": 1024}
MAX_BATCH = 4096
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


@dataclass(frozen=True)
class Setting:
    """One row of the probe: what is measured."""

    backbone: str
    size: int
    batch: int
    method: str
    recompute: bool  # adapter recomputation (meaningless, and False, for methods without adapter modules)
    checkpoint_blocks: bool
    amp: bool
    steps: int = 2
    side: str | None = None  # a plain ViT's side network (domainmona.adapters.side); None: the backbone's own
    side_cfg: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    setting: Setting
    device: str
    peak_bytes: int | None  # None when the step ran out of memory
    step_s: float | None
    step_cpu_s: float | None  # CPU time of this process per step: robust to other jobs on a shared machine
    kept_bytes: int | None  # what autograd keeps for backward over a forward (`saved_tensor_bytes`)
    trainable_params: int
    adapter_file_bytes: int
    failure: str = ""

    def fits(self, budget: int | None) -> bool:
        return self.peak_bytes is not None and (budget is None or self.peak_bytes <= budget)


def parse_budget(text: str) -> int:
    """'8GB', '8G', '7.5GiB', '512MB' -> bytes (binary units: 8GB is 8 GiB, as GPU memory is quoted)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise UserError(f"--memory-budget: '{text}' is not a size like 8GB, 512MB or 7.5GiB")
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(value) or value < 1:
        raise UserError(f"--memory-budget must be at least one byte, got '{text}'")
    return int(value)


def is_volume(backbone: str) -> bool:
    """A 3D network (volumes in, not images); unknown names are refused in one line."""
    return get_backbone(backbone).dims == 3


def check_request(backbone: str, size: int, batch: int, methods: list[str], steps: int) -> None:
    """Refuse a request the probe cannot measure, before any model is built."""
    from domainmona.adapters.methods import get_method

    limit = MAX_SIZE["3d" if is_volume(backbone) else "2d"]
    if not SIZE_MULTIPLE <= size <= limit or size % SIZE_MULTIPLE:
        raise UserError(f"--size must be a multiple of {SIZE_MULTIPLE} from {SIZE_MULTIPLE} to {limit} for "
                        f"{backbone}, got {size}")
    if not 1 <= batch <= MAX_BATCH:
        raise UserError(f"--batch must be from 1 to {MAX_BATCH}, got {batch}")
    if not 1 <= steps <= 100:
        raise UserError(f"--steps must be from 1 to 100, got {steps}")
    if not methods:
        raise UserError("--method names no method")
    for name in methods:
        get_method(name)


def settings(backbone: str, size: int, batch: int, methods: list[str], recompute: str, checkpoint_blocks: bool,
             amp: bool, steps: int = 2, side: str | None = None, side_cfg: dict | None = None) -> list[Setting]:
    """Every combination to measure. `recompute`: 'on', 'off' or 'compare' (both); `checkpoint_blocks` adds
    rows with the backbone's block checkpointing; `amp` adds mixed-precision rows (CUDA); `side`: a plain
    ViT's side network in every row."""
    from domainmona.adapters.methods import get_method

    out = []
    for name in methods:
        flags = {"on": (True,), "off": (False,), "compare": (True, False)}[recompute]
        for flag in flags if get_method(name).recomputes else (False,):
            for blocks in (False, True) if checkpoint_blocks else (False,):
                for mixed in (False, True) if amp else (False,):
                    out.append(Setting(backbone, size, batch, name, flag, blocks, mixed, steps, side,
                                       dict(side_cfg or {})))
    return out


class AnonymousPeak:
    """Peak anonymous resident memory (resident minus file-backed pages, from /proc/self/statm) sampled by a
    thread every `interval` seconds: tensors live in anonymous memory, while the shared-library pages that a
    first forward pulls in would count in the plain RSS."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> int:
        _, resident, shared, *_ = (int(v) for v in Path("/proc/self/statm").read_text().split())
        return (resident - shared) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(self.interval)

    def __enter__(self) -> "AnonymousPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def build(setting: Setting, device):
    """The backbone with the method injected, its optimizer and a seeded input on `device`; and `step()`, one
    training step (forward, backward, AdamW; forward only when nothing trains)."""
    import torch

    from domainmona.adapters import inject, set_block_checkpointing
    from domainmona.adapters.backbones import build_backbone, sided
    from domainmona.adapters.backbones.features import train_whole

    torch.manual_seed(0)
    model = inject(build_backbone(setting.backbone, **sided(setting.side, setting.side_cfg)), setting.method,
                   recompute_adapters=setting.recompute)
    train_whole(model)
    if setting.checkpoint_blocks:
        set_block_checkpointing(model)
    model.to(device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    # A frozen backbone ('fixed') only runs forward: its features feed a head trained elsewhere.
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.05) if trainable else None
    shape = (setting.batch, 1, *(setting.size,) * 3) if is_volume(setting.backbone) else \
        (setting.batch, 3, setting.size, setting.size)
    image = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=setting.amp and cuda and dtype == torch.float16)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=setting.amp), \
                torch.set_grad_enabled(optimizer is not None):
            loss = sum(f.float().square().mean() for f in _outputs(model(image)))
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if cuda:
            torch.cuda.synchronize()

    return model, image, step


def _outputs(out) -> list:
    return [t for o in out for t in _outputs(o)] if isinstance(out, (list, tuple)) else [out]


def measure(setting: Setting) -> Row:
    """One row, measured in this process (run it in a fresh one: see `probe`)."""
    import torch

    from domainmona.adapters import save_adapter, saved_tensor_bytes
    from domainmona.adapters.backbones.features import trained_whole

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    # Libraries load before the baseline: their import-time allocations are no part of a training step.
    for library in ("domainmona.adapters.inject",
                    "monai.networks.nets" if is_volume(setting.backbone) else "mmdet.models.backbones.swin", "timm"):
        importlib.import_module(library)
    before = AnonymousPeak.now()
    with contextlib.nullcontext() if cuda else AnonymousPeak() as sampler:
        model, image, step = build(setting, device)
        try:
            step()
        except torch.OutOfMemoryError:
            step = None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    peak, step_s, step_cpu_s, kept = None, None, None, None
    if step is not None:
        peak = torch.cuda.max_memory_allocated() if cuda else sampler.peak - before
        times, cpu_times = [], []
        for _ in range(setting.steps):
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        step_s, step_cpu_s = statistics.median(times), statistics.median(cpu_times)
        with torch.autocast(device.type, enabled=setting.amp):
            kept = saved_tensor_bytes(lambda: model(image), model)
    with tempfile.TemporaryDirectory() as tmp:  # after the step: serialising must not raise its peak
        try:
            adapter_bytes = save_adapter(model, Path(tmp) / "adapter.safetensors",
                                         trained_whole(model)).stat().st_size
        except UserError:  # nothing trains
            adapter_bytes = 0
    return Row(setting, device.type, peak, step_s, step_cpu_s, kept, trainable, adapter_bytes,
               "" if step else "out of memory")


def probe(requested: list[Setting], timeout: float | None = None) -> list[Row]:
    """Measure each setting in a fresh Python process (`python -m domainmona.adapters.probe`)."""
    rows = []
    for setting in requested:
        try:
            done = subprocess.run([sys.executable, "-m", "domainmona.adapters.probe",
                                   json.dumps(dataclasses.asdict(setting))],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            rows.append(Row(setting, "", None, None, None, None, 0, 0, f"took over {timeout:.0f} s"))
            continue
        lines = done.stdout.strip().splitlines()
        if done.returncode or not lines:
            reason = "killed (out of memory?)" if done.returncode < 0 else \
                (done.stderr.strip().splitlines() or ["failed"])[-1][:120]
            rows.append(Row(setting, "", None, None, None, None, 0, 0, reason))
            continue
        data = json.loads(lines[-1])
        rows.append(Row(**{**data, "setting": Setting(**data["setting"])}))
    return rows


def _mb(count: int | None) -> str:
    return "—" if count is None else f"{count / 2**20:,.0f} MB"


def table(rows: list[Row], budget: int | None):
    """A rich table of the rows, least memory first; failed rows last."""
    from rich.table import Table

    first = rows[0].setting if rows else None
    title = f"training step: {first.backbone}, size {first.size}, batch {first.batch}" if first else "training step"
    if first and first.side:
        title += f", side network {first.side}"
    device = next((r.device for r in rows if r.device), "")
    out = Table(title=f"{title} ({device})")
    columns = ["method", "recompute", "block ckpt", "AMP", "peak memory", "step time", "trainable",
               "adapter file"] + (["fits"] if budget is not None else [])
    for column in columns:
        out.add_column(column, justify="left" if column == "method" else "right")
    for row in sorted(rows, key=lambda r: (r.peak_bytes is None, r.peak_bytes or 0)):
        s = row.setting
        cells = [s.method, ("on" if s.recompute else "off") if _recomputes(s.method) else "—",
                 "on" if s.checkpoint_blocks else "off", "on" if s.amp else "off",
                 _mb(row.peak_bytes) if not row.failure else row.failure,
                 "—" if row.step_s is None else f"{row.step_s:.2f} s", f"{row.trainable_params / 1e6:.2f}M",
                 _mb(row.adapter_file_bytes)]
        out.add_row(*cells, *(["yes" if row.fits(budget) else "no"] if budget is not None else []))
    return out


def describe(setting: Setting) -> str:
    """'mona (recompute, block checkpointing, AMP)': the method and the switches that are on."""
    switches = [name for name, on in (("recompute", setting.recompute), ("block checkpointing",
                                      setting.checkpoint_blocks), ("AMP", setting.amp)) if on]
    return f"{setting.method} ({', '.join(switches)})" if switches else setting.method


def _recomputes(method: str) -> bool:
    from domainmona.adapters.methods import get_method

    return get_method(method).recomputes


def main() -> None:
    """Worker entry point: measure the JSON setting in argv[1], print the row as JSON."""
    row = measure(Setting(**json.loads(sys.argv[1])))
    print(json.dumps(dataclasses.asdict(row)))


if __name__ == "__main__":
    main()

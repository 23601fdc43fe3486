"""The `domainmona` command line. Thin: each domain registers its commands; errors become one line.

The command tree lives in `domainmona.commands`. Domain command modules (`domainmona/<domain>/cli.py`) expose
`register(groups)` and import their heavy dependencies (torch, mmrotate, MONAI, GDAL) inside the command
functions, so `--help` and `--version` load none of them (tests/test_cli.py checks).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from domainmona import interrupts
from domainmona.adapters import cli as adapters_cli
from domainmona.commands import app, groups
from domainmona.console import console, err_console
from domainmona.detection import cli as detection_cli
from domainmona.errors import UserError
from domainmona.geo import cli as geo_cli
from domainmona.medical import cli as medical_cli


@app.command()
def doctor(brief: bool = typer.Option(False, "--brief", help="One line when every check passes; the table only "
                                                              "when one fails.")) -> None:
    """Print the stack's versions, GDAL and CUDA, the mmcv build, and run the rotated-box ops on each device."""
    from domainmona.doctor import run_checks

    checks = run_checks()
    failed = [c for c in checks if not c.ok]
    if not (brief and not failed):
        table = Table(title="domainmona doctor")
        for column in ("check", "status", "detail"):
            table.add_column(column)
        for check in checks:
            table.add_row(check.name, "[green]ok[/]" if check.ok else "[red]FAIL[/]", check.detail)
        console.print(table)
    if failed:
        more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
        raise UserError(f"{failed[0].name}: {failed[0].detail}{more}")
    build = next((c.detail for c in checks if c.name == "mmcv build"), "")
    console.print(f"[green]all {len(checks)} checks passed[/]" + (f" ({build})" if brief and build else ""),
                  highlight=False)


@app.command("export")
def export(checkpoint: Path = typer.Argument(..., help="geo-seg checkpoint (train geo-seg), detector checkpoint (train dota|star|geo-det) or segment-ct best.pt/last.pt."),
           out: Path = typer.Option(..., "--out", help="MODEL.onnx to write (replaces only a file domainmona "
                                    "exported); a detector also writes MODEL.roi_head.onnx beside it."),
           size: Optional[int] = typer.Option(None, "--size", min=32, help="geo-seg: tile size the file takes, a "
                                              "multiple of 32 (default: training's).")) -> None:
    """Export a geo-seg or CT checkpoint to ONNX, adapters merged and fused: dynamic batch, spatial axes fixed at
    the tile size (geo-seg, a multiple of 32) or the training ROI (CT); classes, bands, normalisation, tile/ROI
    size and overlap, CT spacing and the checkpoint's SHA-256 in its metadata_props. A rotated-box detector
    becomes two graphs, MODEL.onnx (image -> FPN levels and RPN outputs, one fixed-size image) and
    MODEL.roi_head.onnx (RoI features -> class probabilities and boxes), which domainmona.onnx_detector joins
    in numpy (proposals, rotated RoIAlign, rotated NMS); the metadata names both and every glue setting."""
    from domainmona.export import export_checkpoint

    metadata = export_checkpoint(checkpoint, out, size)
    console.print(f"{metadata['kind']}: {metadata['network']}, input {metadata['input_shape']}", highlight=False,
                  markup=False)
    console.print(str(out), soft_wrap=True, highlight=False, markup=False)
    if metadata["kind"] == "detector":
        from domainmona.export import roi_head_path

        console.print(str(roi_head_path(out)), soft_wrap=True, highlight=False, markup=False)


for _domain in (adapters_cli, detection_cli, medical_cli, geo_cli):
    _domain.register(groups)


def run(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code: 0, or 2 with one `error: ...` line on stderr for bad
    input (options click rejects, UserError, files the OS refuses), 130 after Ctrl-C with one line saying
    what was kept. Nothing else is caught: a traceback is a bug. A run that fails or is interrupted removes
    the folders it made that hold nothing of its work (domainmona.io.undo_folders_on_failure). Whatever a
    library made of a Ctrl-C (domainmona.interrupts), the run ends as interrupted."""
    from domainmona.io import undo_folders_on_failure

    kept: list = []
    try:
        with interrupts.recording(), undo_folders_on_failure(kept):
            try:
                code = _dispatch(argv)
            except Exception:
                interrupts.check()  # after Ctrl-C, a failure is its doing (a class half-made: RuntimeError)
                raise
            interrupts.check()  # a Ctrl-C some library swallowed
            if code:
                raise _Failed(code)
    except _Failed as failed:
        return failed.code
    except (KeyboardInterrupt, typer.Abort):  # typer.Abort: click's name for Ctrl-C during a prompt
        code = _interrupted(kept)
        _let_pool_threads_finish()
        return code
    return code


POOL_THREADS_WAIT = 60.0  # seconds; a pool thread finishes the one item it holds (a volume's transforms)


def _let_pool_threads_finish() -> None:
    """Wait for the threads of thread pools (MONAI's CacheDataset fills its cache on one) to finish their
    current item. Ctrl-C ends the pool but not the item; a thread still inside torch when the interpreter
    shuts down is stopped by unwinding through C++ frames, which aborts the process (exit -6, "terminate
    called without an active exception") instead of exit 130. A second Ctrl-C stops waiting."""
    from multiprocessing.dummy import DummyProcess

    deadline = time.monotonic() + POOL_THREADS_WAIT
    try:
        for thread in threading.enumerate():
            if isinstance(thread, DummyProcess) and thread.daemon:
                thread.join(max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:
        pass


class _Failed(Exception):
    """A non-zero exit code carried out of `undo_folders_on_failure`, so that the run's folders are undone."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def _dispatch(argv: list[str] | None) -> int:
    """The command's exit code; bad input printed as one line (exit 2). Ctrl-C propagates as
    KeyboardInterrupt, also when typer or click turned it into an exit of their own."""
    try:
        result = app(args=argv, prog_name="domainmona", standalone_mode=False)
    except (typer.Exit, SystemExit) as exc:
        code = exc.exit_code if isinstance(exc, typer.Exit) else exc.code
        if isinstance(exc.__context__, KeyboardInterrupt) or code == 130:  # Ctrl-C made into a silent exit
            raise KeyboardInterrupt from None
        return code if isinstance(code, int) else 0 if code is None else _fail(str(code))
    except typer.TyperException as exc:  # click's usage errors: unknown or missing options, out-of-range values
        if type(exc).__name__ == "NoArgsIsHelpError":  # a group called alone: its help, as click would show it
            console.print(exc.format_message(), highlight=False, markup=False)
            return 2
        return _fail(exc.format_message() if hasattr(exc, "format_message") else str(exc))
    except UserError as exc:
        return _fail(str(exc))
    except (OSError, MemoryError) as exc:  # disk full, permission denied, ...: the user can act on it
        from domainmona.io import os_error_line

        return _fail(os_error_line(exc))
    if result == 130:  # typer turns Ctrl-C into Exit(130), whose code it returns in non-standalone mode
        raise KeyboardInterrupt
    return result if isinstance(result, int) else 0


def _interrupted(kept: list | None = None) -> int:
    """The one line after Ctrl-C: that nothing half-written stays, and which folders this run made do
    (those holding finished work, such as a training's checkpoints)."""
    made = f"; it made and kept {', '.join(map(str, kept))}" if kept else "; no folder it made was kept"
    return _fail(f"interrupted: nothing half-written was kept{made}; rerun the command (with --resume to continue "
                 "a training)", code=130)


MESSAGE_LIMIT = 2000  # characters of an error line: a message must never carry an unbounded value


def _fail(message: str, code: int = 2) -> int:
    line = " ".join(str(message)[:4 * MESSAGE_LIMIT].split())  # one line, whatever the message held
    if len(line) > MESSAGE_LIMIT:
        line = line[:MESSAGE_LIMIT] + " [...]"
    err_console.print(f"[red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    return code


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()

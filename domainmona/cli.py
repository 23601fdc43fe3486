"""The `domainmona` command line. Thin: each domain registers its commands; errors become one line.

The command tree lives in `domainmona.commands`. Domain command modules (`domainmona/<domain>/cli.py`) expose
`register(groups)` and import their heavy dependencies (torch, mmrotate, MONAI, GDAL) inside the command
functions, so `--help` and `--version` load none of them (tests/test_cli.py checks).
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape
from rich.table import Table

from domainmona.adapters import cli as adapters_cli
from domainmona.commands import app, groups
from domainmona.console import console, err_console
from domainmona.detection import cli as detection_cli
from domainmona.errors import UserError
from domainmona.geo import cli as geo_cli
from domainmona.medical import cli as medical_cli


@app.command()
def doctor() -> None:
    """Print the stack's versions, GDAL and CUDA, and run mmcv's compiled rotated-box ops."""
    from domainmona.doctor import run_checks

    checks = run_checks()
    table = Table(title="domainmona doctor")
    for column in ("check", "status", "detail"):
        table.add_column(column)
    for check in checks:
        table.add_row(check.name, "[green]ok[/]" if check.ok else "[red]FAIL[/]", check.detail)
    console.print(table)
    failed = [c for c in checks if not c.ok]
    if failed:
        more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
        raise UserError(f"{failed[0].name}: {failed[0].detail}{more}")
    console.print("[green]all checks passed[/]")


for _domain in (adapters_cli, detection_cli, medical_cli, geo_cli):
    _domain.register(groups)


def run(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code: 0, or 2 with one `error: ...` line on stderr for bad
    input (options click rejects, UserError, files the OS refuses), 130 after Ctrl-C. Nothing else is caught:
    a traceback is a bug."""
    try:
        result = app(args=argv, prog_name="domainmona", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:  # click's name for Ctrl-C during a prompt or the command
        return _interrupted()
    except typer.TyperException as exc:  # click's usage errors: unknown or missing options, out-of-range values
        if type(exc).__name__ == "NoArgsIsHelpError":  # a group called alone: its help, as click would show it
            console.print(exc.format_message(), highlight=False, markup=False)
            return 2
        return _fail(exc.format_message() if hasattr(exc, "format_message") else str(exc))
    except UserError as exc:
        return _fail(str(exc))
    except (OSError, MemoryError) as exc:  # disk full, permission denied, ...: the user can act on it
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        return _fail(f"{getattr(exc, 'strerror', None) or exc}{where}")
    except KeyboardInterrupt:
        return _interrupted()
    return result if isinstance(result, int) else 0


def _interrupted() -> int:
    return _fail("interrupted; nothing half-written was kept, rerun the command (with --resume to continue training)",
                 code=130)


def _fail(message: str, code: int = 2) -> int:
    line = " ".join(str(message).split())  # one line, whatever the message held
    err_console.print(f"[red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    return code


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()

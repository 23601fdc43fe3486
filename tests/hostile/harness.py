"""The hostile-input suite's harness (imported by the test modules as `harness`): run a command as a careless or hostile user would, then check the
README's promises — exit 2, one `error:` line, no traceback, nothing written or changed, nothing left behind,
no code run from a crafted file.

Each test module lists its cases as data (`Case` rows) for one domain's commands and runs them through
`refused` (or `killed_then_rerun` for interruptions). Commands run in-process through `domainmona.cli.run`,
the same entry point as the console script, so that a hundred cases cost seconds, not a hundred imports of
torch; the kill cases and one crafted-pickle case run real subprocesses.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CASES_RUN: Counter = Counter()  # command -> hostile cases run, printed at the end of the session


@dataclass(frozen=True)
class Case:
    """One bad invocation: ``argv`` may use `{ws}` for the workspace; ``expect`` is a part of the error
    line (case-insensitive); ``setup`` prepares extra files in the workspace before the snapshot."""

    id: str
    argv: tuple[str, ...]
    expect: str
    setup: Callable[[Path], None] | None = None
    counted_as: str = ""  # for rows that name no real command

    @property
    def command(self) -> str:
        if self.counted_as:
            return self.counted_as
        words = [a for a in self.argv if not a.startswith("-") and "{ws}" not in a]
        groups = {"train", "test", "eval", "split", "segment-ct", "adapters"}
        return " ".join(words[:2]) if words and words[0] in groups else (words[0] if words else "")

    def args(self, ws: Path) -> list[str]:
        return [a.replace("{ws}", str(ws)) for a in self.argv]


Setup = Callable[[Path], None]


def write(relative: str, content: str | bytes) -> Setup:
    """Setup: a file at WS/relative (folders made) with this text or these bytes."""

    def setup(ws: Path) -> None:
        path = ws / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return setup


def steps(*setups: Setup) -> Setup:
    """Setup: several setups in order."""

    def setup(ws: Path) -> None:
        for step in setups:
            step(ws)

    return setup


def ids(cases) -> list[str]:
    return [c.id for c in cases]


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    changes: dict = field(default_factory=dict)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root`` (hidden ones included) with size and modification time."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            state[os.path.relpath(os.path.join(dirpath, name), root) + "/"] = ()
        for name in filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            state[os.path.relpath(path, root)] = (info.st_size, info.st_mtime_ns)
    return state


def diff(before: dict, after: dict) -> dict[str, list[str]]:
    return {"added": sorted(set(after) - set(before)), "removed": sorted(set(before) - set(after)),
            "changed": sorted(k for k in set(before) & set(after) if before[k] != after[k])}


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run `domainmona ARGV` in this process; (exit code, stdout, stderr). A traceback propagates."""
    from domainmona.cli import run

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(argv)
    return code, out.getvalue(), err.getvalue()


def assert_one_error_line(code: int, stdout: str, stderr: str, expect: str = "") -> str:
    assert "Traceback" not in stdout + stderr, stderr
    assert code == 2, f"exit {code}\nstdout: {stdout}\nstderr: {stderr}"
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert stderr.strip().splitlines()[-1] == errors[0], stderr  # the error is the last thing said
    assert expect.lower() in errors[0].lower(), f"expected {expect!r} in: {errors[0]}"
    return errors[0]


def refused(case: Case, ws: Path) -> str:
    """Run a case that must be refused: exit 2, one error line, workspace exactly as before."""
    if case.setup is not None:
        case.setup(ws)
    before = snapshot(ws)
    code, stdout, stderr = run_cli(case.args(ws), ws)
    changes = diff(before, snapshot(ws))
    CASES_RUN[case.command] += 1
    line = assert_one_error_line(code, stdout, stderr, case.expect)
    assert not any(changes.values()), f"{case.id}: files changed by a refused command: {changes}"
    return line


def run_subprocess(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "domainmona.cli", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_until_gone(session: int, timeout: float = 30) -> None:
    """Wait until no process of the killed command's session runs any more (its worker processes die with it
    a moment later), so that the rerun starts after the kill is complete, as a user's would."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == session and fields[0] not in ("Z", "X"):  # fields: state, ppid, pgrp, session
                running.append(stat.parent.name)
        if not running:
            return
        time.sleep(0.05)
    pytest.fail(f"processes {running} of a killed command still run after {timeout} s")


def killed_then_rerun(argv: list[str], cwd: Path, ready: Callable[[], bool], timeout: float = 600,
                      command: str = "", rerun: list[str] | None = None) -> subprocess.CompletedProcess:
    """Start the command, SIGKILL it once ``ready()`` holds (work under way), then run ``rerun`` (default: the
    same command; a training command adds `--resume`) to completion.

    Returns the rerun, which must succeed; the caller checks the outputs and that no temporary is left.
    """
    process = subprocess.Popen([sys.executable, "-m", "domainmona.cli", *argv], cwd=cwd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                pytest.fail(f"{' '.join(argv)} finished (exit {process.returncode}) before it could be killed")
            if time.monotonic() > deadline:
                pytest.fail(f"{' '.join(argv)}: never reached the point to kill it")
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)  # the main process only, as `kill -9 PID` does
    finally:
        process.wait()
    _wait_until_gone(process.pid)
    CASES_RUN[command or argv[0]] += 1
    result = run_subprocess(rerun or argv, cwd, timeout)
    assert result.returncode == 0, result.stderr
    return result


# An output under folders that do not exist yet: a refused or interrupted run must not leave them behind.
NEW = "{ws}/new/deep"


@dataclass(frozen=True)
class Interrupt:
    """A run interrupted by Ctrl-C once ``ready(ws)`` holds (work under way): ``argv`` writes under `NEW`."""

    id: str
    argv: tuple[str, ...]
    ready: Callable[[Path], bool]
    setup: Callable[[Path], None] | None = None

    @property
    def command(self) -> str:
        return Case(self.id, self.argv, "").command

    def args(self, ws: Path) -> list[str]:
        return Case(self.id, self.argv, "").args(ws)


def made_new(ws: Path) -> bool:
    """Ready: the run made a folder under `NEW`'s parent."""
    return (ws / "new").exists()


def _terminal_sigint() -> None:
    """In the child: Ctrl-C's default disposition, as a process started from a terminal has it. A suite run in
    the background (`cmd &` in a script, nohup) inherits SIGINT ignored, and ignored signals stay ignored across
    exec: Python would then never raise KeyboardInterrupt and every case would run to its end."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupted(case: Interrupt, ws: Path, timeout: float = 300) -> str:
    """Ctrl-C (SIGINT to the command's process group, as a terminal sends it) once the case is ready: exit
    130, one `error: interrupted...` line, no temporaries, and no folder of `NEW` left unless the line names
    it as kept (a training's work). Returns the line."""
    if case.setup is not None:
        case.setup(ws)
    before = snapshot(ws)
    process = subprocess.Popen([sys.executable, "-m", "domainmona.cli", *case.args(ws)], cwd=ws,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=_terminal_sigint)
    deadline = time.monotonic() + timeout
    try:
        while not case.ready(ws):
            if process.poll() is not None:
                pytest.fail(f"{case.id}: finished (exit {process.returncode}) before it could be interrupted: "
                            f"{process.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{case.id}: never reached the point to interrupt it")
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    _wait_until_gone(process.pid)
    CASES_RUN[case.command] += 1
    assert "Traceback" not in stderr, stderr
    # Death by SIGINT after the line is printed is the same exit to a shell ($? = 130). CPython ends that way
    # when a KeyboardInterrupt once left code run through its PyRun_* C API (_Py_UnhandledKeyboardInterrupt),
    # as extension modules' embedded Python does (pybind11's py::exec); seen for Ctrl-C while torch imports.
    assert process.returncode in (130, -signal.SIGINT), f"exit {process.returncode}: {stderr}"
    line = stderr.strip().splitlines()[-1]
    errors = [s for s in stderr.splitlines() if s.startswith("error:")]
    assert line.startswith("error: interrupted") and len(errors) == 1, stderr
    assert not temporaries(ws), temporaries(ws)
    added = diff(before, snapshot(ws))["added"]
    left = [a for a in added if a.startswith("new/")]
    if left:
        assert "kept" in line and any(str(ws / a.rstrip("/")) in line for a in left), (line, left)
    return line


TEMPORARY = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp")  # domainmona.io's `.NAME.PID.TOKEN.tmp...`


def temporaries(root: Path) -> list[Path]:
    """Temporaries of domainmona's outputs anywhere under ``root``."""
    return [p for p in root.rglob(".*") if TEMPORARY.match(p.name)]


MARKER = "pwned"  # the file a crafted pickle creates in the workspace if its code ran


def crafted(relative: str) -> Setup:
    """Setup: a crafted pickle at WS/relative that would create WS/MARKER if unpickled with code execution."""

    def setup(ws: Path) -> None:
        (ws / relative).parent.mkdir(parents=True, exist_ok=True)
        crafted_pickle(ws / relative, ws / MARKER)

    return setup


def crafted_pickle(path: Path, marker: Path) -> Path:
    """A torch checkpoint that creates ``marker`` when unpickled with code execution allowed."""
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"meta": {"epoch": 1}, "state_dict": {"w": torch.zeros(1)}, "payload": Payload()}, path)
    return path

"""What domainmona reads and writes, and the promises it keeps about both.

- **Atomic outputs**: every file or folder is written under a temporary name beside its final place and
  renamed onto it only when complete; a temporary left by a killed run (its name holds the dead process's
  id) is removed by the next run that writes the same output.
- **No user file lost**: an output folder is new, empty, or one domainmona made — it holds a `.domainmona.json`
  record. A folder written as a whole (`atomic_dir`) is replaced only when it holds nothing but what its
  record lists. A named output file is never one of the command's inputs, and an existing one is replaced
  only when domainmona wrote it (`claim_file`).
- **No code execution from a file**: torch files load with `weights_only=True` and an explicit allow-list
  (`load_torch`); everything else domainmona saves is safetensors or JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from domainmona.errors import UserError

RECORD = ".domainmona.json"  # in every output folder domainmona made
PRODUCER = "domainmona"  # the mark in JSON outputs (`producer` key) and file metadata


# ---------------------------------------------------------------------------------------------- temporaries

def _temp_path(final: Path, suffix: str = "") -> Path:
    """`.NAME.PID.TOKEN.tmp[SUFFIX]` beside ``final``: hidden, unique, and traceable to its process."""
    return final.parent / f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}"


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs. A zombie does not: a killed worker whose parent died stays one until
    init reaps it, which some container inits never do."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (macOS): trust kill()
        return True
    return state not in ("Z", "X")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temps(final: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``final`` left by processes that no longer run (killed, power loss)."""
    final = Path(final)
    prefix = f".{final.name}."
    removed = []
    if not final.parent.is_dir():
        return removed
    for entry in final.parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        pid, _, rest = entry.name[len(prefix):].partition(".")
        if pid.isdigit() and ".tmp" in f".{rest}" and int(pid) != os.getpid() and not _alive(int(pid)):
            _remove(entry)
            removed.append(entry)
    return removed


def _suffix(final: Path) -> str:
    return "".join(final.suffixes[-2:]) if final.suffix == ".gz" else final.suffix


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    The temporary keeps ``final``'s suffix (both parts of `.nii.gz`, `.tar.gz`) so that libraries choosing a
    format by extension (GDAL, nibabel, safetensors, PIL) still do the right thing. Only its name is
    reserved: the writer creates the file, so it gets the usual permissions.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
    tmp_path = _temp_path(final, _suffix(final))
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            _remove(tmp_path)


@contextlib.contextmanager
def scratch_dir(beside: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``beside`` (same filesystem), removed afterwards — or by the next run if
    this one is killed."""
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(beside)
    tmp = _temp_path(beside)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------------- output folders

def read_record(folder: Path) -> dict[str, Any] | None:
    """The `.domainmona.json` record of a folder domainmona made, or None."""
    path = folder / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("producer") == PRODUCER else None


def _write_record(folder: Path, command: str, files: list[str] | None) -> None:
    record = {"producer": PRODUCER, "command": command}
    if files is not None:
        record["files"] = files
    (folder / RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir() and p.name != RECORD)


def check_parent(path: str | os.PathLike, what: str = "output") -> None:
    """Refuse, before any work, an output below a file (it could only fail once the work is done)."""
    path = Path(path)
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{what} {path}: {parent} is a file, not a folder")
            return


def _foreign(path: Path) -> str:
    return (f"{path} holds files domainmona did not write; refusing to touch them "
            "(choose a new or empty folder)")


def check_replaceable(final: str | os.PathLike, command: str, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse, before any work, to replace ``final`` unless it is absent, empty, or a folder this command
    wrote as a whole that holds nothing else, and none of ``inputs`` lies inside it."""
    final = Path(final)
    check_parent(final)
    if not final.exists():
        return
    if not final.is_dir():
        raise UserError(f"{final} is a file, not a folder; choose a folder path")
    for item in inputs:
        if _inside(Path(item), final):
            raise UserError(f"{final} holds {item}, an input of this command; choose another output folder")
    if not any(final.iterdir()):
        return
    record = read_record(final)
    if record is None or record.get("command") != command or "files" not in record:
        raise UserError(_foreign(final))
    extra = sorted(set(_files_under(final)) - set(record["files"]))
    if extra:
        raise UserError(f"{final} holds {len(extra)} file(s) domainmona did not write there (e.g. {extra[0]}); "
                        "refusing to replace it")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, command: str, inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; it replaces ``final`` only on success.

    ``final`` must pass `check_replaceable`. The new folder's record lists every file in it, so the next
    run can tell its own files from anything a user adds later.
    """
    final = Path(final)
    inputs = list(inputs)
    check_replaceable(final, command, inputs)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
    tmp = _temp_path(final)
    tmp.mkdir(mode=0o777 & ~_umask())
    old = None
    try:
        yield tmp
        _write_record(tmp, command, _files_under(tmp))
        check_replaceable(final, command, inputs)  # again: the user may have added files meanwhile
        if final.exists():
            old = _temp_path(final)
            os.replace(final, old)
        os.replace(tmp, final)
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def claim_dir(folder: str | os.PathLike, command: str) -> Path:
    """Make ``folder`` an output folder that ``command`` writes into file by file (work dirs, `--out` dirs).

    It must be new, empty, or already one domainmona made for writing into; it gets a record if new.
    """
    folder = Path(folder)
    check_parent(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file, not a folder; choose a folder path")
    if folder.is_dir() and any(folder.iterdir()):
        record = read_record(folder)
        if record is None or "files" in record:
            raise UserError(_foreign(folder))
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / RECORD) as tmp:
        tmp.write_text(json.dumps({"producer": PRODUCER, "command": command}, indent=1), encoding="utf-8")
    return folder


# ---------------------------------------------------------------------------------------------- output files

def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def json_is_ours(path: Path) -> bool:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(content, dict) and str(content.get("producer", "")).startswith(PRODUCER)


def claim_file(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (),
               is_ours: Callable[[Path], bool] | None = None, what: str = "output") -> Path:
    """Check, before any work, that ``path`` may receive a new output: not a folder, not one of ``inputs``,
    and either absent or a file domainmona wrote (``is_ours``, by default: a JSON with our `producer`)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file path")
    check_parent(path, what)
    for item in inputs:
        if path.exists() and same_file(path, item) or Path(item).resolve() == path.resolve():
            raise UserError(f"{what} {path} is one of this command's inputs; refusing to overwrite it")
    if path.exists():
        check = is_ours or json_is_ours
        if not check(path):
            raise UserError(f"{what} {path} exists and was not written by domainmona; refusing to overwrite it")
    return path


def write_json(path: str | os.PathLike, content: dict[str, Any]) -> Path:
    """Atomically write a JSON output marked with our `producer` key (so a later run may replace it)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"producer": PRODUCER, **content}, indent=2), encoding="utf-8")
    return Path(path)


# ------------------------------------------------------------------------------------------------ safe reads

def load_torch(path: str | os.PathLike, allow: Iterable[Any] = (), what: str = "checkpoint") -> Any:
    """`torch.load(weights_only=True)` with only ``allow`` added to torch's own safe types: no pickled code
    runs. A refused or unreadable file is a one-line UserError."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path}: no such file")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # not a refusal: the bytes are not a pickle torch can read
            raise UserError(f"{what} {path}: not a readable PyTorch file") from None
        raise UserError(f"{what} {path}: refused to load (it asks to build objects that could run code)") from None
    except Exception as exc:  # zip, EOF, safetensors or other format errors of a file that is not torch's
        raise UserError(f"{what} {path}: not a readable PyTorch file ({type(exc).__name__})") from None


def load_safetensors(path: str | os.PathLike, what: str = "checkpoint") -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of a .safetensors file; a missing, truncated or foreign file is a one-line
    UserError (safetensors raises its own error types, and a header it cannot parse as OSError/ValueError)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:  # SafetensorError, or the OS/JSON errors behind it
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{what} {path}: not a readable safetensors file ({reason})") from None

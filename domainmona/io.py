"""What domainmona reads and writes, and the promises it keeps about both.

- **Atomic outputs**: every file or folder is written under a temporary name beside its final place and
  renamed onto it only when complete; a temporary left by a killed run (its name holds the dead process's
  id) is removed by the next run that writes the same output.
- **No user file lost**: an output folder is new, empty, or one domainmona made — it holds a `.domainmona.json`
  record. A folder written as a whole (`atomic_dir`) is replaced only when it holds nothing but what its
  record lists. A named output file is never one of the command's inputs, and an existing one is replaced
  only when domainmona wrote it (`claim_file`).
- **Nothing left by a refused or interrupted run**: every folder made for an output (parents included) goes
  through `make_folders`, which remembers it; `undo_folders_on_failure` (around every command) removes, when
  the command fails or is interrupted, those that still hold nothing but their record.
- **No code execution from a file**: torch files load with `weights_only=True` and an explicit allow-list
  (`load_torch`); everything else domainmona saves is safetensors or JSON. YAML is read without aliases
  (`read_yaml`), so a small file cannot expand into gigabytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from domainmona import interrupts
from domainmona.errors import UserError

RECORD = ".domainmona.json"  # in every output folder domainmona made
LOG = "domainmona.log"  # the frameworks' log (domainmona.logs), in a work or output folder once it is claimed
PRODUCER = "domainmona"  # the mark in JSON outputs (`producer` key) and file metadata


# ----------------------------------------------------------------------------------------- folders made

_MADE: list[Path] = []  # folders this process made for outputs, in the order made


def make_folders(folder: str | os.PathLike) -> Path:
    """`mkdir -p` for an output, remembering each folder it makes (see `undo_folders_on_failure`)."""
    folder = Path(folder)
    missing = []
    for path in (folder, *folder.parents):
        if path.exists() or path.is_symlink():
            break
        missing.append(path)
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue
        _MADE.append(path)
    if not folder.is_dir():
        raise UserError(f"{folder}: is a file, not a folder")
    return folder


def _unmake(made: list[Path]) -> list[Path]:
    """Remove the folders of ``made`` (newest first) that hold nothing but a record (and the frameworks' log
    of the failed run); the others are kept and returned."""
    kept = []
    for folder in reversed(made):
        try:
            contents = list(folder.iterdir())
        except OSError:
            continue
        if all(entry.name in (RECORD, LOG) and entry.is_file() for entry in contents):
            for entry in contents:
                entry.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()
                continue
        kept.append(folder)
    return kept


@contextlib.contextmanager
def undo_folders_on_failure(kept: list[Path] | None = None) -> Iterator[None]:
    """Around a command: if it raises (a refusal, an error, Ctrl-C), remove the folders it made that hold
    nothing but a record, so that a failed run leaves nothing that did not exist before it. The folders it
    made that hold work (a training's checkpoints) stay, and are added to ``kept``. On success the folders
    stay remembered, for an enclosing call to undo if the command fails later."""
    start = len(_MADE)
    try:
        yield
    except BaseException:
        remaining = _unmake(_MADE[start:])
        del _MADE[start:]
        if kept is not None:  # the deepest of them, in the order made
            kept.extend(f for f in reversed(remaining) if not any(f in k.parents for k in remaining))
        raise


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
    with undo_folders_on_failure():
        make_folders(final.parent)
        remove_stale_temps(final)
        tmp_path = _temp_path(final, _suffix(final))
        try:
            yield tmp_path
            interrupts.check()  # nothing is committed after Ctrl-C, even one a library swallowed
            os.replace(tmp_path, final)
        finally:
            if tmp_path.exists() or tmp_path.is_symlink():
                _remove(tmp_path)


@contextlib.contextmanager
def scratch_dir(beside: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``beside`` (same filesystem), removed afterwards — or by the next run if
    this one is killed."""
    beside = Path(beside)
    with undo_folders_on_failure():
        make_folders(beside.parent)
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
    if final.is_symlink():  # a link to a folder: the output goes where it points, and the link stays
        final = final.resolve()
    inputs = list(inputs)
    check_replaceable(final, command, inputs)
    with undo_folders_on_failure():
        make_folders(final.parent)
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
                if leftover is not None and (leftover.exists() or leftover.is_symlink()):
                    _remove(leftover)


def is_claimed(folder: Path) -> bool:
    """``folder`` is an output folder a command writes into file by file (its record lists no files of its own,
    unlike the folders of generated data or chips, which are written whole)."""
    record = read_record(folder)
    return record is not None and "files" not in record


def claim_dir(folder: str | os.PathLike, command: str) -> Path:
    """Make ``folder`` an output folder that ``command`` writes into file by file (work dirs, `--out` dirs).

    It must be new, empty, or already one domainmona made for writing into; it gets a record if new.
    """
    folder = Path(folder)
    check_parent(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file, not a folder; choose a folder path")
    if folder.is_dir() and any(folder.iterdir()):
        if not is_claimed(folder):
            raise UserError(_foreign(folder))
        return folder
    make_folders(folder)
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


def os_error_line(exc: BaseException) -> str:
    """One line for an OSError, naming its real cause: GDAL (through rasterio) says "Write failed. See
    previous exception for details." and keeps the cause ("No space left on device") in the chained
    exceptions; the messages are joined, innermost (the cause) first."""
    messages, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__
        if getattr(exc, "filename", None) and str(exc.filename) not in text:
            text = f"{text}: {exc.filename}"
        text = " ".join(text.replace("See previous exception for details.", "").split()).rstrip(".")
        if text and text not in messages:
            messages.insert(0, text)
        exc = exc.__cause__ or exc.__context__
    return "; ".join(messages)[:1000]


# ------------------------------------------------------------------------------------------------ safe reads

YAML_LIMIT = 1 << 20  # bytes: a settings file is a few KB


def read_yaml(path: str | os.PathLike, what: str = "YAML file") -> Any:
    """The data of a user's YAML file, read without aliases (`*name`) and at most `YAML_LIMIT` bytes long,
    so that a few lines cannot expand into gigabytes (a "billion laughs" file); one-line UserError else."""
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise UserError(f"{path}: line {mark.line + 1}: YAML aliases (*name) are not supported; "
                                f"write the {what}'s values out")
            return super().compose_node(parent, index)

    path = Path(path)
    try:
        if path.stat().st_size > YAML_LIMIT:
            raise UserError(f"{path}: {path.stat().st_size:,} bytes; a {what} is at most {YAML_LIMIT:,}")
        return yaml.load(path.read_text(encoding="utf-8"), Loader=NoAliases)  # noqa: S506 (a SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise UserError(f"{path}: not a readable {what} ({reason})") from None


def load_torch(path: str | os.PathLike, allow: Iterable[Any] = (), what: str = "checkpoint") -> Any:
    """`torch.load(weights_only=True)` with only ``allow`` added to torch's own safe types: no pickled code
    runs. A refused or unreadable file is a one-line UserError."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path}: no such file")
    try:  # torch warns (on stderr, before our one line) about what it refuses or finds odd: the error says it
        with torch.serialization.safe_globals(list(allow)), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # not a refusal: the bytes are not a pickle torch can read
            raise UserError(f"{what} {path}: not a readable PyTorch file") from None
        raise UserError(f"{what} {path}: refused to load (it asks to build objects that could run code)") from None
    except Exception as exc:  # zip, EOF, safetensors or other format errors of a file that is not torch's
        raise UserError(f"{what} {path}: not a readable PyTorch file ({type(exc).__name__})") from None


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata in a safetensors checkpoint's header (its tensors are not read); a foreign file is one line."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for a non-safetensors file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: not a safetensors checkpoint ({reason})") from None


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

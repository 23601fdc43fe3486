"""The command line's shape: no import cycle, `--help` of every command without the heavy stacks, `--version`."""

import importlib.metadata
import json
import subprocess
import sys

import pytest

import domainmona
from domainmona.cli import run

HEAVY = ("torch", "torchvision", "mmcv", "mmengine", "mmdet", "mmrotate", "monai", "rasterio", "pyogrio", "shapely",
         "timm", "segmentation_models_pytorch", "nibabel", "numpy", "scipy", "matplotlib")

# In a fresh interpreter: import the domain command modules alone, then the CLI, build the click tree and ask
# every command for its help; report what got imported on the way.
_PROBE = """
import contextlib, io, json, sys
import domainmona.adapters.cli, domainmona.detection.cli, domainmona.detection.dataset_cli
import domainmona.geo.cli, domainmona.medical.cli
cycle = "domainmona.cli" in sys.modules
import typer.main
from domainmona.cli import app, run
helps = {}
def walk(command, path):
    for name, child in (getattr(command, "commands", None) or {}).items():
        walk(child, [*path, name])
    with contextlib.redirect_stdout(io.StringIO()) as out:
        helps[" ".join(path)] = (run([*path, "--help"]), len(out.getvalue()))
walk(typer.main.get_command(app), [])
print(json.dumps({"cycle": cycle, "helps": helps, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_domain_commands_import_no_cli_and_help_loads_no_heavy_stack():
    probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert not found["cycle"], "a domain's command module imports domainmona.cli"
    assert len(found["helps"]) >= 25  # root, 6 groups and every command (19 today)
    assert {path: (code, chars) for path, (code, chars) in found["helps"].items() if code != 0 or chars < 200} == {}
    assert sorted(set(HEAVY) & set(found["modules"])) == []


def test_version_prints_the_package_version(capsys):
    assert run(["--version"]) == 0
    assert capsys.readouterr().out == f"domainmona {domainmona.__version__}\n"
    assert domainmona.__version__ == importlib.metadata.version("domainmona")  # one version, also pyproject's


def test_version_from_the_installed_command_exits_zero():
    done = subprocess.run([sys.executable, "-m", "domainmona.cli", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"domainmona {domainmona.__version__}\n", "")


def test_cli_choices_are_the_registries():
    from typing import get_args

    from domainmona.adapters import METHOD_NAMES, METHODS
    from domainmona.adapters.backbones import backbone_names, backbones
    from domainmona.adapters.cli import MethodOrAll
    from domainmona.detection.cli import Method
    from domainmona.geo.cli import Method as GeoMethod
    from domainmona.medical.cli import MethodOrNone

    assert tuple(METHODS) == METHOD_NAMES == get_args(Method) == get_args(GeoMethod)
    assert get_args(MethodOrNone) == (*METHODS, "none") and get_args(MethodOrAll) == (*METHODS, "all")
    assert backbone_names() == tuple(backbones())  # the names the CLI reads without torch


def test_an_unregistered_adapter_is_refused_before_anything_runs(tmp_path):
    done = subprocess.run([sys.executable, "-m", "domainmona.cli", "train", "geo-seg", "--chips", str(tmp_path),
                           "--work-dir", str(tmp_path / "w"), "--adapter", "monaa"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "'monaa' is not one of 'full'" in " ".join(done.stderr.split())
    assert not (tmp_path / "w").exists()


_SUBMODULES_FIRST = """
import domainmona.adapters.fuse, domainmona.adapters.inject
from domainmona.adapters import fuse, inject
import domainmona.adapters as adapters
print(fuse.__module__, inject.__module__, adapters.fuse is fuse, sorted(set(adapters.__all__) - set(dir(adapters))))
"""


def test_adapter_exports_win_over_same_named_submodules_imported_first():
    """`fuse` and `inject` are functions of the package even when their submodules were imported before."""
    done = subprocess.run([sys.executable, "-c", _SUBMODULES_FIRST], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["domainmona.adapters.fuse", "domainmona.adapters.inject", "True", "[]"]


def test_after_ctrl_c_the_pool_threads_finish_their_item_before_the_interpreter_stops():
    """MONAI's CacheDataset fills its cache on a ThreadPool; Ctrl-C ends the pool, not the item a thread holds.
    The CLI waits for those threads (a thread left inside torch at shutdown aborts the process, exit -6)."""
    import threading
    import time
    from multiprocessing.dummy import DummyProcess
    from multiprocessing.pool import ThreadPool

    from domainmona.cli import _let_pool_threads_finish

    done = []
    with ThreadPool(2) as pool:
        pool.map_async(lambda i: (time.sleep(0.3), done.append(i)), range(2))
        time.sleep(0.05)  # both threads hold an item when the pool is ended
    assert any(isinstance(t, DummyProcess) for t in threading.enumerate())
    _let_pool_threads_finish()
    assert sorted(done) == [0, 1]
    assert not any(isinstance(t, DummyProcess) for t in threading.enumerate())


def _swallowed_ctrl_c() -> None:
    """Ctrl-C delivered where a library catches everything (a bare `except:` around an optional import)."""
    import signal

    try:
        signal.raise_signal(signal.SIGINT)
    except BaseException:
        pass


def test_a_ctrl_c_a_library_swallowed_still_ends_the_run_and_commits_nothing(monkeypatch, tmp_path, capsys):
    import domainmona.cli as cli
    from domainmona.io import atomic_path

    def command(argv):
        _swallowed_ctrl_c()
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("work after Ctrl-C")
        return 0

    monkeypatch.setattr(cli, "_dispatch", command)
    assert run([]) == 130
    assert capsys.readouterr().err.strip().startswith("error: interrupted")
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary


def test_a_ctrl_c_turned_into_another_exception_or_success_is_read_as_the_interrupt(monkeypatch):
    """Python 3.11 wraps a KeyboardInterrupt raised in `__set_name__` in RuntimeError; a command may also end."""
    import domainmona.cli as cli
    from domainmona.console import progress

    def fails(argv):
        _swallowed_ctrl_c()
        raise RuntimeError("Error calling __set_name__ on 'Field' instance")

    def ends(argv):
        _swallowed_ctrl_c()
        return 0

    steps_done = []

    def steps(argv):
        with progress() as bar:
            task = bar.add_task("work", total=2)
            _swallowed_ctrl_c()
            for step in range(2):  # the next step is where the run ends
                bar.advance(task)
                steps_done.append(step)
        return 0

    for command in (fails, ends, steps):
        monkeypatch.setattr(cli, "_dispatch", command)
        assert run([]) == 130, command.__name__
    assert steps_done == []


def test_without_ctrl_c_runs_are_untouched_and_python_s_handler_is_back(monkeypatch, tmp_path):
    import signal

    import domainmona.cli as cli
    from domainmona.io import atomic_path

    def command(argv):
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("done")
        return 0

    monkeypatch.setattr(cli, "_dispatch", command)
    assert run([]) == 0 and (tmp_path / "out.txt").read_text() == "done"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(cli, "_dispatch", lambda argv: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # without Ctrl-C a failure stays a traceback
        run([])

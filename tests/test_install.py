"""scripts/install.sh's pins and interpreter choice: the exact versions of scripts/constraints.txt lie inside
pyproject.toml's ranges, and a new .venv gets $PYTHON or the newest supported python3.1x that runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins() -> dict[str, str]:
    lines = (ROOT / "scripts" / "constraints.txt").read_text().splitlines()
    pairs = [line.split("==") for line in lines if line and not line.startswith("#")]
    assert all(len(pair) == 2 for pair in pairs), "constraints.txt holds only name==version lines"
    return {canonicalize_name(name): version for name, version in pairs}


def test_every_dependency_is_pinned_inside_its_range():
    pins = _pins()
    project = PYPROJECT["project"]
    requirements = [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["test"]]]
    outside = [(str(r), pins.get(canonicalize_name(r.name))) for r in requirements
               if not r.specifier.contains(pins.get(canonicalize_name(r.name), "0"), prereleases=True)]
    assert outside == []
    assert "domainmona" not in pins and not any("@" in version for version in pins.values())
    # the interpreters the script may pick are the ones the metadata allows
    assert project["requires-python"] == ">=3.11,<3.14"
    assert {f"Programming Language :: Python :: 3.{minor}" for minor in (11, 12, 13)} <= set(project["classifiers"])


def _fake_python(folder: Path, name: str, version: str | None) -> None:
    """A python3.1x that reports `version`, and fails anything else (or everything when None, as a pyenv shim
    of a version that is not activated does)."""
    script = folder / name
    answer = f'case "$*" in *version_info*) echo {version};; *) exit 3;; esac' if version else "exit 127"
    script.write_text(f"#!/bin/sh\n{answer}\n")
    script.chmod(0o755)


def _install(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "repo" / "scripts").mkdir(parents=True)
    for name in ("install.sh", "constraints.txt"):
        shutil.copy(ROOT / "scripts" / name, tmp_path / "repo" / "scripts" / name)
    base = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    return subprocess.run(["bash", str(tmp_path / "repo" / "scripts" / "install.sh")], capture_output=True,
                          text=True, env={**base, **env}, timeout=60)


def test_a_new_venv_takes_the_newest_supported_python_that_runs(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    _fake_python(fake, "python3.13", None)  # on PATH but does not run
    _fake_python(fake, "python3.12", "3.12")
    result = _install(tmp_path, PATH=f"{fake}:{os.environ['PATH']}")
    assert f"creating {tmp_path}/repo/.venv with python3.12 (Python 3.12)" in result.stdout
    assert result.returncode != 0  # the fake cannot make a venv; nothing past the choice ran


@pytest.mark.parametrize("python, message", [
    ("python3.10-missing", "error: PYTHON=python3.10-missing does not run"),
    ("fake-3.10", "error: fake-3.10 is Python 3.10; supported: 3.13 3.12 3.11"),
])
def test_an_unusable_python_is_refused_before_anything_is_made(tmp_path, python, message):
    fake = tmp_path / "bin"
    fake.mkdir()
    _fake_python(fake, "fake-3.10", "3.10")
    result = _install(tmp_path, PYTHON=python, PATH=f"{fake}:{os.environ['PATH']}")
    assert (result.returncode, result.stderr.strip()) == (2, message)
    assert not (tmp_path / "repo" / ".venv").exists()


def test_an_unknown_mmcv_ops_choice_is_refused_before_anything_is_made(tmp_path):
    result = _install(tmp_path, DOMAINMONA_MMCV_OPS="cuda")
    assert (result.returncode, result.stderr.strip()) == (
        2, "error: DOMAINMONA_MMCV_OPS=cuda is not one of torch (the default: no compiler), compile")
    assert not (tmp_path / "repo" / ".venv").exists()

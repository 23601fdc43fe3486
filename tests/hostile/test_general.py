"""Hostile inputs to the command line as a whole and to the adapter commands; the suite's coverage rule:
every command has rows, and so does every numeric option of every command."""

from __future__ import annotations

import importlib
import typing
from pathlib import Path

import pytest
import typer.main
from harness import NEW, Case, Interrupt, ids, refused, run_cli

CASES = [
    Case("unknown-command", ("frobnicate",), "no such command", counted_as="command line as a whole"),
    Case("unknown-subcommand", ("train", "imagenet"), "no such command", counted_as="command line as a whole"),
    Case("unknown-option", ("adapters", "report", "--colour", "red"), "no such option"),
    Case("missing-required-option", ("eval", "dota", "--dets", "{ws}"), "missing option '--gt'"),
    Case("bad-choice", ("train", "dota", "--data", "{ws}", "--work-dir", "{ws}/w", "--backbone", "resnet"),
         "invalid value for '--backbone'"),
    Case("int-option-given-text", ("split", "dota", "--src", "{ws}", "--dst", "{ws}/d", "--size", "big"),
         "invalid value for '--size'"),
    Case("report-unknown-backbone", ("adapters", "report", "--backbone", "swin-xxl"), "swin-xxl"),
    Case("report-unknown-method", ("adapters", "report", "--method", "prompt-magic"), "prompt-magic"),
    Case("report-option-without-value", ("adapters", "report", "--option", "inner_dim"), "KEY=VALUE"),
    Case("report-option-bad-value", ("adapters", "report", "--option", "inner_dim=-4"), "inner_dim"),
    Case("report-option-unknown-key", ("adapters", "report", "--option", "colour=red"), "colour"),
    Case("probe-unknown-backbone", ("adapters", "probe", "--backbone", "resnet-9000"), "resnet-9000"),
    Case("probe-unknown-method", ("adapters", "probe", "--method", "mona,prompt-magic"), "prompt-magic"),
    Case("probe-no-method", ("adapters", "probe", "--method", ", ,"), "no method"),
    Case("probe-size-not-multiple", ("adapters", "probe", "--size", "250"), "--size"),
    Case("probe-size-0", ("adapters", "probe", "--size", "0"), "--size"),
    Case("probe-size-negative", ("adapters", "probe", "--size", "-256"), "--size"),
    Case("probe-size-huge", ("adapters", "probe", "--size", "99999999999999999999"), "--size"),
    Case("probe-size-volume-too-big", ("adapters", "probe", "-b", "swinunetr", "--size", "2048"), "--size"),
    Case("probe-size-text", ("adapters", "probe", "--size", "big"), "--size"),
    Case("probe-batch-0", ("adapters", "probe", "--batch", "0"), "--batch"),
    Case("probe-batch-negative", ("adapters", "probe", "--batch", "-1"), "--batch"),
    Case("probe-batch-huge", ("adapters", "probe", "--batch", "1000000"), "--batch"),
    Case("probe-steps-0", ("adapters", "probe", "--steps", "0"), "--steps"),
    Case("probe-steps-negative", ("adapters", "probe", "--steps", "-2"), "--steps"),
    Case("probe-budget-words", ("adapters", "probe", "--memory-budget", "eight gigs"), "--memory-budget"),
    Case("probe-budget-zero", ("adapters", "probe", "--memory-budget", "0GB"), "--memory-budget"),
    Case("probe-budget-negative", ("adapters", "probe", "--memory-budget", "-8GB"), "--memory-budget"),
    Case("probe-budget-unit", ("adapters", "probe", "--memory-budget", "8 parsecs"), "--memory-budget"),
    Case("probe-recompute-both-ways", ("adapters", "probe", "--no-recompute", "--compare-recompute"),
         "exclude each other"),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_refused(case, tmp_path):
    refused(case, tmp_path)


def test_help_and_no_arguments_are_not_errors(tmp_path):
    code, stdout, _ = run_cli(["--help"], tmp_path)
    assert code == 0 and "tile-predict" in stdout
    code, stdout, stderr = run_cli(["train"], tmp_path)  # a group without a command shows its help
    assert "Traceback" not in stdout + stderr and "geo-seg" in stdout + stderr


# ------------------------------------------------------------------------------------ coverage of the suite

def _leaf_commands() -> dict:
    from domainmona.cli import app

    leaves = {}

    def walk(command, path):
        for name, child in getattr(command, "commands", {}).items():
            walk(child, [*path, name])
        if not getattr(command, "commands", None):
            leaves[" ".join(path)] = command

    walk(typer.main.get_command(app), [])
    return leaves


def _all_cases(kind: type = Case) -> list:
    cases = []
    for module_path in sorted(Path(__file__).parent.glob("test_*.py")):
        module = importlib.import_module(module_path.stem)
        for value in vars(module).values():
            if isinstance(value, (list, tuple)) and value and all(isinstance(v, kind) for v in value):
                cases += value
    return cases


def _numeric(param) -> bool:
    """An int or float option (also Optional or a list of them), from the annotation typer keeps."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    return annotation in (int, float) or any(a in (int, float) for a in typing.get_args(annotation))


# Commands with no input a user could get wrong beyond what click itself checks.
NO_INPUTS = {"doctor"}


def test_every_command_and_numeric_option_has_hostile_rows():
    """A new command or numeric flag must add its rows to the suite."""
    cases = _all_cases()
    missing = []
    for name, command in _leaf_commands().items():
        own = [c for c in cases if c.command == name]
        if not own and name not in NO_INPUTS:
            missing.append(f"{name}: no case")
        for param in command.params:
            if param.param_type_name == "option" and _numeric(param):
                if not any(flag in c.argv for c in own for flag in param.opts):
                    missing.append(f"{name} {param.opts[0]}: no case")
    assert not missing, "hostile rows missing:\n" + "\n".join(missing)


OUTPUT_FOLDERS = ("--out", "--work-dir", "--dst")  # the options naming what a command writes


def test_every_output_has_a_refused_and_an_interrupted_row_under_new_folders():
    """A command that writes an output has a row refusing bad input with its output under folders that do not
    exist yet (`NEW`), and a Ctrl-C row writing there: neither may leave those folders behind."""
    cases, interrupts = _all_cases(), _all_cases(Interrupt)
    missing = []
    for name, command in _leaf_commands().items():
        flags = [opt for param in command.params for opt in param.opts if opt in OUTPUT_FOLDERS]
        if not flags:
            continue

        def under_new(argv) -> bool:
            return any(a in flags and b.startswith(NEW) for a, b in zip(argv, argv[1:]))

        if not any(c.command == name and under_new(c.argv) for c in cases):
            missing.append(f"{name}: no refused row writing under NEW")
        if not any(c.command == name and under_new(c.argv) for c in interrupts):
            missing.append(f"{name}: no interrupted row writing under NEW")
    assert not missing, "hostile rows missing:\n" + "\n".join(missing)


# ------------------------------------------------------------------------------------ resource bombs

# Run in a fresh process: (exit code, seconds in `run`, peak resident memory in bytes) on its last line.
# (VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent, here pytest with torch loaded.)
MEASURE = """
import re, sys, time
from domainmona.cli import run
start = time.monotonic()
code = run(sys.argv[1:])
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
print(code, time.monotonic() - start, peak)
"""
BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)) + "train: {roi: *i}\n"


def _bomb_workspace(ws: Path) -> None:
    from domainmona.medical.synthetic import write_dataset

    write_dataset(ws / "task", cases=3, shape=(40, 40, 20), seed=3)
    (ws / "bomb.yaml").write_text(BILLION_LAUGHS)
    import numpy as np
    import rasterio
    from affine import Affine

    with rasterio.open(ws / "scene.tif", "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(0.5, 0, 400000, 0, -0.5, 5100000)) as dst:
        dst.write(np.zeros((3, 64, 64), dtype="uint8"))


BOMBS = {
    "yaml-alias-bomb": (["segment-ct", "train", "--data", "{ws}/task", "--work-dir", "{ws}/run", "--config",
                         "{ws}/bomb.yaml"], "aliases"),
    "tile-predict-size-1e9": (["tile-predict", "{ws}/scene.tif", "--checkpoint", "{ws}/none.safetensors", "--out",
                               "{ws}/p.tif", "--size", "1000000000"], "would need"),
    "tile-size-1e9": (["tile", "{ws}/scene.tif", "--labels", "{ws}/none.gpkg", "--out", "{ws}/chips", "--size",
                       "1000000000"], "would need"),
}


@pytest.mark.parametrize("name", BOMBS)
def test_resource_bombs_are_refused_fast_and_small(name, tmp_path):
    """The alias bomb and a 10^9-pixel tile are refused before anything grows: in under 5 s and 256 MiB (the
    process's peak resident memory, its imports included), which holds only while torch has not been imported
    (torch alone is ~500 MiB; with MONAI the alias bomb's refusal once peaked at 1,037 MiB in CI)."""
    import subprocess
    import sys

    argv, expect = BOMBS[name]
    _bomb_workspace(tmp_path)
    result = subprocess.run([sys.executable, "-c", MEASURE, *(a.replace("{ws}", str(tmp_path)) for a in argv)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    code, seconds, peak = result.stdout.split()[-3:]
    line = [s for s in result.stderr.splitlines() if s.startswith("error:")]
    assert int(code) == 2 and len(line) == 1 and expect in line[0], result.stderr
    print(f"{name}: refused in {float(seconds):.2f} s, peak RSS {int(peak) / 2**20:.0f} MiB")
    assert float(seconds) < 5 and int(peak) < 2**28, (seconds, peak)

"""Hostile inputs to the command line as a whole and to the adapter commands; the suite's coverage rule:
every command has rows, and so does every numeric option of every command."""

from __future__ import annotations

import importlib
import typing
from pathlib import Path

import pytest
import typer.main
from harness import Case, ids, refused, run_cli

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


def _all_cases() -> list[Case]:
    cases = []
    for module_path in sorted(Path(__file__).parent.glob("test_*.py")):
        module = importlib.import_module(module_path.stem)
        for value in vars(module).values():
            if isinstance(value, (list, tuple)) and value and all(isinstance(v, Case) for v in value):
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

"""The README documents every command with an example, and its examples only use flags that exist."""

import re
from pathlib import Path

import pytest
import typer.main

from domainmona.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _commands() -> dict[str, object]:
    """'train dota' -> its click command, for every leaf of the CLI tree."""
    leaves = {}

    def walk(command, path):
        children = getattr(command, "commands", None)
        if children:
            for name, child in children.items():
                walk(child, path + [name])
        else:
            leaves[" ".join(path)] = command

    walk(typer.main.get_command(app), [])
    return leaves


COMMANDS = _commands()


def _examples() -> list[str]:
    """Command lines in code spans and fenced blocks, continuation lines joined."""
    blocks = re.findall(r"```(?:bash)?\n(.*?)```", README, flags=re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    lines += re.findall(r"`(domainmona [^`]+)`", README)
    return [line.split("#")[0].strip() for line in lines if line.strip().startswith("domainmona ")]


def _command_of(example: str) -> str | None:
    words = example.split()[1:]
    for length in (2, 1):
        if " ".join(words[:length]) in COMMANDS:
            return " ".join(words[:length])
    return None


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_a_readme_example(command):
    assert any(_command_of(example) == command for example in _examples()), f"no example of domainmona {command}"


def test_readme_examples_use_existing_commands_and_flags():
    examples = [e for e in _examples() 
                if not any(mark in e for mark in ("|", "...", "<")) and e != "domainmona --help"]  # prose
    assert len(examples) >= len(COMMANDS)
    for example in examples:
        command = _command_of(example)
        assert command is not None, f"unknown command in README: {example}"
        flags = {opt for param in COMMANDS[command].params for opt in getattr(param, "opts", [])}
        used = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", example))
        assert used <= flags, f"{example}: unknown flags {sorted(used - flags)}"

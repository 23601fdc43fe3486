"""Start-up time of the command line: `domainmona --help`, `--version` and every `<command> --help`, each in a
fresh process as a user types it (the installed `domainmona` script). Goal: every one under 1 s.

The median of `--rounds` runs per command line is reported: wall time (process start to exit, which load from
other processes inflates) and the process's CPU time (user + system, which it barely does).
Writes benchmarks/results/cli.md and cli.json.

    .venv/bin/python benchmarks/bench_cli.py [--rounds 5] [--only "train dota --help" --only=--help]

`--only TEXT` (repeatable) times just the command lines equal to `domainmona TEXT` and prints them, writing no
results (a quick before/after check of a change).
"""

from __future__ import annotations

import argparse
import json
import resource
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import typer.main

from domainmona.cli import app

GOAL_S = 1.0
RESULTS = Path(__file__).parent / "results"


def command_lines() -> list[list[str]]:
    """`--version`, then `--help` of the root, every group and every command."""
    lines = [["--version"]]

    def walk(command, path):
        lines.append([*path, "--help"])
        for name, child in (getattr(command, "commands", None) or {}).items():
            walk(child, [*path, name])

    walk(typer.main.get_command(app), [])
    return lines


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", action="append", default=[], help="time only `domainmona ONLY`; no files written")
    args = parser.parse_args()
    script = Path(sys.executable).with_name("domainmona")
    rows = []
    chosen = [argv for argv in command_lines() if not args.only or " ".join(argv) in args.only]
    for argv in chosen:
        times, cpu = [], []
        for _ in range(args.rounds):
            before, start = _children_cpu_s(), time.perf_counter()
            subprocess.run([str(script), *argv], check=True, capture_output=True)
            times.append(time.perf_counter() - start)
            cpu.append(_children_cpu_s() - before)
        rows.append({"command": " ".join(["domainmona", *argv]), "median_s": statistics.median(times),
                     "max_s": max(times), "cpu_s": statistics.median(cpu)})
    if args.only:
        for row in rows:
            print(f"{row['command']}: median {row['median_s']:.2f} s wall, {row['cpu_s']:.2f} s CPU")
        return
    worst = max(row["median_s"] for row in rows)
    result = {"machine": f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
              "rounds": args.rounds, "goal_s": GOAL_S, "worst_median_s": worst, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cli.json").write_text(json.dumps(result, indent=2) + "\n")
    table = ["| command line | median wall (s) | max wall (s) | median CPU (s) |", "| --- | ---: | ---: | ---: |"]
    table += [f"| `{row['command']}` | {row['median_s']:.2f} | {row['max_s']:.2f} | {row['cpu_s']:.2f} |"
              for row in rows]
    verdict = "met" if worst < GOAL_S else "MISSED"
    (RESULTS / "cli.md").write_text(f"# Command-line start-up ({result['machine']}, {args.rounds} rounds)\n\n"
                                    f"Slowest median {worst:.2f} s; goal < {GOAL_S:g} s: {verdict}.\n\n"
                                    + "\n".join(table) + "\n")
    print(f"slowest median {worst:.2f} s over {len(rows)} command lines (goal < {GOAL_S:g} s: {verdict})")


if __name__ == "__main__":
    main()

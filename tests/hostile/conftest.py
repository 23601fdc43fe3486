"""Prints how many hostile cases ran per command (the suite's size) at the end of the session."""

from harness import CASES_RUN


def pytest_terminal_summary(terminalreporter):
    if CASES_RUN:
        terminalreporter.section("hostile-input cases per command")
        for command, count in sorted(CASES_RUN.items()):
            terminalreporter.write_line(f"{command:24s} {count}")
        terminalreporter.write_line(f"{'total':24s} {sum(CASES_RUN.values())}")

"""`domainmona adapters report`: the parameter table for a named backbone, and one-line errors."""

import pytest
from typer.testing import CliRunner

from domainmona.cli import app
from domainmona.errors import UserError

pytest.importorskip("mmdet")


def test_report_prints_the_paper_count_for_mona_swin_t():
    result = CliRunner().invoke(app, ["adapters", "report", "--backbone", "swin-t", "--method", "mona"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "1,408,128" in result.output and "27,520,698" in result.output and "5.12%" in result.output


def test_report_passes_method_options():
    result = CliRunner().invoke(app, ["adapters", "report", "-m", "lora", "-o", "rank=8"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "141,312" in result.output  # 12 blocks x 2 x (8 x C + C x 8) for q and v


@pytest.mark.parametrize("args, message", [(["-b", "swin-xl"], "unknown backbone 'swin-xl' (choose from: micro, swin-t, swin-s"),
                                           (["-m", "monaa"], "'monaa' is not one of 'full', 'fixed'")])
def test_names_outside_the_registries_are_refused_by_the_choices(args, message):
    result = CliRunner().invoke(app, ["adapters", "report", *args], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and message in " ".join(result.output.replace("│", " ").split())


@pytest.mark.parametrize("args, message", [(["-m", "mona", "-o", "rank"], "--option expects KEY=VALUE"),
                                           (["-m", "lora", "-o", "rnk=8"], "has no option 'rnk'")])
def test_bad_arguments_are_user_errors(args, message):
    result = CliRunner().invoke(app, ["adapters", "report", *args])
    assert isinstance(result.exception, UserError) and message in str(result.exception)


def test_report_all_lists_every_method_and_marks_those_the_family_lacks():
    from domainmona.adapters import METHOD_NAMES

    result = CliRunner().invoke(app, ["adapters", "report", "-b", "swin-t", "-m", "all"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 2}
    assert set(rows) == set(METHOD_NAMES)
    assert "not defined" in rows["vpt-shallow"] and "1,408,128" in rows["mona"]
    assert "not defined" not in "".join(rows[m] for m in METHOD_NAMES if m != "vpt-shallow")

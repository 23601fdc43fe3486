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


@pytest.mark.parametrize("args, message", [(["-b", "swin-xl"], "unknown backbone 'swin-xl'"),
                                           (["-m", "mona", "-o", "rank"], "--option expects KEY=VALUE"),
                                           (["-m", "lora", "-o", "rnk=8"], "has no option 'rnk'")])
def test_bad_arguments_are_user_errors(args, message):
    result = CliRunner().invoke(app, ["adapters", "report", *args])
    assert isinstance(result.exception, UserError) and message in str(result.exception)

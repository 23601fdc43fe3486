"""`domainmona split dota|star` and `domainmona eval dota` through the real command line."""

import json
import subprocess
import sys

import numpy as np
from typer.testing import CliRunner

from domainmona.cli import app
from domainmona.detection.dota.labels import read_dota_labels
from domainmona.detection.synthetic import generate_dota_scenes
from domainmona.errors import UserError

runner = CliRunner()


def test_split_dota_writes_patches_and_reports(tmp_path):
    generate_dota_scenes(tmp_path / "raw", n_images=2, image_size=300, seed=1)
    # synthetic class names are not DOTA's: `split dota` refuses them with the file and line
    result = runner.invoke(app, ["split", "dota", "--src", str(tmp_path / "raw"), "--dst", str(tmp_path / "out"),
                                 "--workers", "1"])
    assert isinstance(result.exception, UserError) and "scene0000.txt:3: unknown class" in str(result.exception)
    assert not (tmp_path / "out").exists()  # labels are checked before anything is written

    labels = tmp_path / "raw" / "labelTxt" / "scene0000.txt"
    labels.write_text(labels.read_text().replace(" vehicle ", " small-vehicle ")
                      .replace(" court ", " tennis-court ").replace(" container ", " large-vehicle "))
    (tmp_path / "raw" / "labelTxt" / "scene0001.txt").write_text("")
    result = runner.invoke(app, ["split", "dota", "--src", str(tmp_path / "raw"), "--dst", str(tmp_path / "out"),
                                 "--size", "200", "--gap", "50", "--rates", "1.0", "--rates", "0.5",
                                 "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "2 images -> 10 patches" in result.output  # 2 x 2 windows at rate 1, one at 0.5, per image
    names = sorted(p.stem for p in (tmp_path / "out" / "annfiles").iterdir())
    assert names[0] == "scene0000__0.5__0___0" and len(names) == 10
    objects = read_dota_labels(tmp_path / "out" / "annfiles" / "scene0000__0.5__0___0.txt").objects
    assert len(objects) == len(read_dota_labels(labels).objects)  # the half-size image fits one patch


def test_eval_dota_prints_the_table_and_writes_json(tmp_path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "P1.txt").write_text("0 0 10 0 10 10 0 10 plane 0\n20 0 30 0 30 10 20 10 plane 0\n")
    (tmp_path / "dets").mkdir()
    (tmp_path / "dets" / "Task1_plane.txt").write_text("P1 0.9 0 0 10 0 10 10 0 10\n")
    result = runner.invoke(app, ["eval", "dota", "--dets", str(tmp_path / "dets"), "--gt", str(tmp_path / "gt"),
                                 "--metric", "area", "--json", str(tmp_path / "res.json")])
    assert result.exit_code == 0, result.output
    assert "plane" in result.output and "0.5000" in result.output
    saved = json.loads((tmp_path / "res.json").read_text())
    assert saved["mAP"] == 0.5 and saved["classes"]["plane"] == {"ap": 0.5, "num_gts": 2, "num_dets": 1}
    np.testing.assert_allclose(saved["iou_thr"], 0.5)


def test_bad_input_exits_2_with_one_line(tmp_path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "P1.txt").write_text("0 0 10 0 10 10 0 plane 0\n")
    (tmp_path / "dets").mkdir()
    (tmp_path / "dets" / "Task1_plane.txt").write_text("P1 0.9 0 0 10 0 10 10 0 10\n")
    process = subprocess.run([sys.executable, "-c", "from domainmona.cli import main; main()", "eval", "dota",
                              "--dets", str(tmp_path / "dets"), "--gt", str(tmp_path / "gt")],
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    assert process.stderr.strip().startswith("error:") and "P1.txt:1:" in process.stderr
    assert len(process.stderr.strip().splitlines()) == 1 and "Traceback" not in process.stderr

"""`tile-predict` on many scenes and many processes: bands of tile rows blended apart and assembled, 2 gloo
processes against 1, `--out-dir` with a scene list, a missing scene, skipped re-runs, one CRS per scene.

Run as a script under torchrun (`_worker`), this file is also the 2-process side of the identity test.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from rasterio.crs import CRS

from domainmona.geo.predict import (LABEL_NODATA, Ranks, StreamOptions, assemble, band_pixels, blend_rows,
                                    class_map_profile, predict_class_map, predict_polygons, row_band, segment_scene,
                                    tile_rows)
from domainmona.geo.synthetic import SceneSpec, write_scene

SEG = StreamOptions(size=96, overlap=32, batch_size=3)
DET_SIZE = 128
DET = StreamOptions(size=DET_SIZE, overlap=80, batch_size=2)
SEG_SPEC = SceneSpec(width=333, height=517, objects=10, seed=7, block=64)
DET_SPEC = SceneSpec(width=300, height=460, objects=14, seed=5, block=64)


def _pixel_model():
    """The same weights in every process (PixelRule seeds its weights, not its bias)."""
    import torch
    from test_geo_predict import PixelRule, _pixel_infer

    torch.manual_seed(0)
    return _pixel_infer(PixelRule(3, 3).eval())


def _predict_both(root: Path, ranks: Ranks) -> tuple[int, int]:
    """The class map (a COG) and the detections of the two test scenes, shared by ``ranks``."""
    from test_geo_predict import _oracle_detector

    seg = write_scene(root / "seg.tif", root / "seg.gpkg", SEG_SPEC)
    det = write_scene(root / "det.tif", root / "det.gpkg", DET_SPEC)
    pixels = predict_class_map(seg.raster, root / "classes.tif", _pixel_model(), ["a", "b"], SEG, cog=True,
                               ranks=ranks)
    infer, classes = _oracle_detector(det, DET_SIZE)
    objects = predict_polygons(det.raster, root / "dets.gpkg", infer, classes, DET, score_thr=0.1, ranks=ranks)
    return pixels, objects


def _worker(root: str) -> None:
    """Under torchrun: every rank predicts both scenes together; rank 0 reports the counts."""
    from domainmona.launch import join_process_group
    from domainmona.geo.predict_many import COLLECTIVE_TIMEOUT

    ranks = Ranks(*join_process_group(COLLECTIVE_TIMEOUT))
    scenes = Path(root) / f"rank{ranks.rank}"  # inputs per rank (each writes the same scene); outputs by rank 0
    scenes.mkdir()
    pixels, objects = _predict_both(scenes, ranks)
    if ranks.rank == 0:
        print(json.dumps({"world": ranks.world, "pixels": pixels, "objects": objects}))


def test_row_bands_split_the_grid_into_contiguous_balanced_bands():
    for rows in (1, 2, 5, 6, 7):
        for world in (1, 2, 3, 4):
            bands = [row_band(rows, Ranks(rank, world)) for rank in range(world)]
            assert [r for band in bands for r in band] == list(range(rows))
            assert max(map(len, bands)) - min(map(len, bands)) <= 1


@pytest.mark.parametrize("world", [2, 3, 5])
def test_bands_blended_apart_and_assembled_equal_the_whole_scene_bitwise(tmp_path, world):
    """What each rank does, done here one band after another: the assembled map is the one-process map."""
    scene = write_scene(tmp_path / "s.tif", tmp_path / "l.gpkg", SEG_SPEC)
    infer = _pixel_model()
    whole = segment_scene(scene.raster, tmp_path / "whole.tif", infer, ["a", "b"], SEG)
    parts = []
    with rasterio.open(scene.raster) as src:
        assert tile_rows(src, SEG.size, SEG.overlap) >= world  # every rank has a band
        for rank in range(world):
            band = row_band(tile_rows(src, SEG.size, SEG.overlap), Ranks(rank, world))
            top, bottom = band_pixels(src, SEG, band)
            with rasterio.open(tmp_path / f"part{rank}.tif", "w", **class_map_profile(src, bottom - top)) as dst:
                first, labelled = blend_rows(src, dst, infer, 3, SEG, band, lambda: None)
            parts.append((first, tmp_path / f"part{rank}.tif", labelled))
        with rasterio.open(tmp_path / "bands.tif", "w", **class_map_profile(src)) as dst:
            labelled = assemble(parts, dst)
    with rasterio.open(whole) as a, rasterio.open(tmp_path / "bands.tif") as b:
        expected, got = a.read(1), b.read(1)
    assert np.array_equal(got, expected)
    assert labelled == (expected != LABEL_NODATA).sum() > 0


def _detections(path: Path) -> list[tuple]:
    _, _, wkb, fields = pyogrio.raw.read(path, columns=["class", "score"])
    return sorted(zip(fields[0].tolist(), fields[1].tolist(), [bytes(g) for g in wkb]))


def _torchrun(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.slow
def test_two_gloo_processes_write_the_bytes_one_process_writes(tmp_path):
    """Segmentation by bands of tile rows (parts assembled by rank 0 into a COG) and detection merged across
    the rank border: the class map file is byte-identical and the detection set the same as one process's."""
    alone = tmp_path / "alone"
    alone.mkdir()
    pixels, objects = _predict_both(alone, Ranks())
    result = _torchrun(__file__, str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"world": 2, "pixels": pixels, "objects": objects}
    shared = tmp_path / "rank0"
    assert (shared / "classes.tif").read_bytes() == (alone / "classes.tif").read_bytes()
    with rasterio.open(shared / "classes.tif") as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    assert _detections(shared / "dets.gpkg") == _detections(alone / "dets.gpkg")
    truth = write_scene(tmp_path / "truth.tif", tmp_path / "truth.gpkg", DET_SPEC).polygons
    assert objects == len(truth)  # each object once: duplicates across the rank border merged too
    assert not list(shared.glob(".*"))  # parts and temporaries gone


# ------------------------------------------------------------------------------------------ the command


def training_chips(root: Path) -> Path:
    """Segmentation chips (tiles 64/16) of a small seeded 3-band uint8 scene with 4 objects: ROOT/chips."""
    from domainmona.geo.tiling import TileOptions, tile_scenes

    scene = write_scene(root / "train.tif", root / "train.gpkg", SceneSpec(width=192, height=192, objects=4,
                                                                              frame=16, seed=1, block=64))
    tile_scenes([scene.raster], scene.labels, root / "chips", TileOptions(size=64, overlap=16, task="segmentation"))
    return root / "chips"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained geo-seg checkpoint on the micro encoder, seeded (3-band uint8 scenes, tiles 64/16)."""
    import torch

    from domainmona.geo.segmodel import build_model, load_settings, model_spec, save_segmenter

    root = tmp_path_factory.mktemp("seg-model")
    spec = model_spec(load_settings(encoder="micro"), json.loads((training_chips(root) / "manifest.json").read_text()))
    torch.manual_seed(0)
    return save_segmenter(build_model(spec), spec, root / "seg.safetensors")


def _scene(root: Path, name: str, crs: str = "EPSG:32633", seed: int = 2) -> Path:
    return write_scene(root / f"{name}.tif", root / f"{name}.gpkg",
                       SceneSpec(width=200, height=170, objects=3, frame=16, seed=seed, block=64, crs=crs)).raster


def _cli(*args) -> tuple[int, str, str]:
    """`domainmona ARGS` in this process, as `main` runs it: (exit code, stdout, stderr)."""
    from domainmona.cli import run
    from domainmona.console import console

    out, err = io.StringIO(), io.StringIO()
    width, console.width = console.width, 250  # table rows on one line each
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run([str(a) for a in args])
    finally:
        console.width = width
    return code, out.getvalue(), err.getvalue()


def test_scene_list_with_a_missing_scene_predicts_the_others_then_fails(checkpoint, tmp_path):
    """Three scenes from a list file (one missing, one in another CRS): two outputs, each in its scene's
    CRS, a summary naming the missing one, exit 2; a re-run skips the finished scenes."""
    utm = _scene(tmp_path, "utm")
    other = _scene(tmp_path / "more", "mercator", crs="EPSG:3857", seed=3)
    listing = tmp_path / "scenes.txt"
    listing.write_text(f"# scenes\n{utm}\n\nmore/mercator.tif\n{tmp_path / 'gone.tif'}\n")
    out = tmp_path / "preds"
    code, table, errors = _cli("tile-predict", f"@{listing}", "--checkpoint", checkpoint, "--out-dir", out)
    assert code == 2, table + errors
    assert errors.strip().splitlines()[-1] == "error: 1 of 3 scene(s) failed (see the table above)"
    assert f"{tmp_path / 'gone.tif'}: raster not found" in table  # the reason, in the table
    assert table.count("predicted") == 2 and table.count("failed") == 1
    assert sorted(p.name for p in out.iterdir()) == [".domainmona.json", "mercator.tif", "mercator.tif.json",
                                                     "utm.tif", "utm.tif.json"]
    for name, raster in (("utm", utm), ("mercator", other)):
        with rasterio.open(raster) as src, rasterio.open(out / f"{name}.tif") as dst:
            assert (dst.crs, dst.transform, dst.shape) == (src.crs, src.transform, src.shape)
            record = json.loads((out / f"{name}.tif.json").read_text())
            assert record["result"] == (dst.read(1) != LABEL_NODATA).sum() > 0
    assert CRS.from_user_input(rasterio.open(out / "mercator.tif").crs) == CRS.from_epsg(3857)

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, table, errors = _cli("tile-predict", f"@{listing}", "--checkpoint", checkpoint, "--out-dir", out)
    assert code == 2 and table.count("skipped") == 2 and table.count("failed") == 1, table + errors
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing written again

    # Another setting is another prediction; the scene given alone succeeds with exit 0.
    code, table, errors = _cli("tile-predict", utm, "--checkpoint", checkpoint, "--out-dir", out, "--overlap", "8")
    assert code == 0 and "predicted" in table and table.strip().splitlines()[-1] == str(out), table + errors
    assert (out / "utm.tif").stat().st_mtime_ns != before["utm.tif"]
    assert json.loads((out / "utm.tif.json").read_text())["settings"]["overlap"] == 8


def test_out_dir_is_refused_in_one_line_for_ambiguous_or_foreign_outputs(checkpoint, tmp_path):
    a, b = _scene(tmp_path / "a", "scene"), _scene(tmp_path / "b", "scene", seed=4)
    cases = [
        ((a, b, "--out-dir", tmp_path / "o"), "would both write"),
        ((a, a, "--out-dir", tmp_path / "o"), "would both write"),
        ((a, b, "--out", tmp_path / "o.tif"), "use --out-dir"),
        ((a,), "give --out (one scene) or --out-dir"),
        ((a, "--out", tmp_path / "o.tif", "--out-dir", tmp_path / "o"), "give --out (one scene) or --out-dir"),
        ((f"@{tmp_path / 'none.txt'}", "--out-dir", tmp_path / "o"), "cannot read the scene list"),
        ((a, "--out-dir", tmp_path / "o", "--gpus", "0"), "--gpus"),
    ]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.md").write_text("mine")
    cases.append(((a, "--out-dir", tmp_path / "mine"), "did not write"))
    for args, message in cases:
        code, printed, errors = _cli("tile-predict", *args, "--checkpoint", checkpoint)
        assert code == 2 and not printed and message in errors, (args, errors)
        assert len(errors.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.tif").exists()


@pytest.mark.slow
def test_gpus_2_relaunches_under_torchrun_and_matches_one_process(checkpoint, tmp_path):
    """`--gpus 2` on a CPU machine: torchrun, gloo. Two scenes: one each; one scene: bands of its tile
    rows. Every class map byte-identical to one process's; the summary printed once."""
    scenes = [_scene(tmp_path, "first"), _scene(tmp_path, "second", seed=5)]
    code, _, errors = _cli("tile-predict", *scenes, "--checkpoint", checkpoint, "--out-dir", tmp_path / "alone")
    assert code == 0, errors
    exe = Path(sys.executable).with_name("domainmona")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for args, out in (((*scenes,), tmp_path / "two"), ((scenes[0],), tmp_path / "split")):
        result = subprocess.run([str(exe), "tile-predict", *map(str, args), "--checkpoint", str(checkpoint),
                                 "--out-dir", str(out), "--gpus", "2"], capture_output=True, text=True, timeout=600,
                                env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.count("tile-predict") == 1 and result.stdout.strip().splitlines()[-1] == str(out)
        for scene in args:
            name = f"{scene.stem}.tif"
            assert (out / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()
            assert json.loads((out / f"{name}.json").read_text())["result"] == \
                json.loads((tmp_path / "alone" / f"{name}.json").read_text())["result"]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    _worker(sys.argv[1])

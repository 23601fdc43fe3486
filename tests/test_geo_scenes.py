"""Training straight from scenes (domainmona.geo.scenes, `train geo-seg --scenes ... --labels ...`): the windows
are `tile`'s chips read on demand, through block-aligned reads, seeded."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import torch
from typer.testing import CliRunner

import domainmona.geo.raster as raster_module
from domainmona.cli import app, run
from domainmona.geo.scenes import SceneOptions, SceneWindows
from domainmona.geo.segtrain import _chip_batches, load_chips
from domainmona.geo.synthetic import SceneSpec, write_scene
from domainmona.geo.tiling import IGNORE, TileOptions, tile_scenes

SIZE, OVERLAP, BANDS, BLOCK, WIDTH, HEIGHT = 160, 32, (3, 2, 1), 64, 768, 640
TRAIN = ("--encoder", "micro", "--arch", "FPN", "--batch-size", "2", "--max-iters", "2")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A uint16 4-band areas scene (labels in EPSG:4326, raster in UTM) with 64-pixel blocks."""
    root = tmp_path_factory.mktemp("scene")
    return write_scene(root / "scene.tif", root / "labels.gpkg",
                       SceneSpec(width=WIDTH, height=HEIGHT, bands=4, dtype="uint16", kind="areas", objects=6, seed=4,
                                 block=BLOCK))


def _windows(scene, sampler="random", shots=None, seed=0, **kwargs) -> SceneWindows:
    return SceneWindows.open(SceneOptions([scene.raster], scene.labels, SIZE, OVERLAP, BANDS, shots=shots,
                                          sampler=sampler, **kwargs), "segmentation", seed)


def _cli(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


def test_grid_sampler_gives_the_batches_of_chip_training(scene, tmp_path):
    """Same windows, labels (cut rule, K-shot subset, IGNORE), statistics and nodata as `tile`: bit-identical."""
    manifest = tile_scenes([scene.raster], scene.labels, tmp_path / "chips",
                           TileOptions(SIZE, OVERLAP, BANDS, "segmentation", shots=2, seed=0))
    chips = _chip_batches(*(torch.from_numpy(a) for a in load_chips(tmp_path / "chips", manifest)))
    windows = _windows(scene, "grid", shots=2)
    assert windows.manifest["stats"] == manifest["stats"]
    assert [s["bands"] for s in windows.manifest["rasters"]] == [r["bands"] for r in manifest["rasters"]]
    g_chips, g_scenes = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    with windows:
        assert len(windows.grid) == len(manifest["chips"])
        for _ in range(4):
            (a, a_mask), (b, b_mask) = chips(3, g_chips), windows.segmentation_batch(3, g_scenes)
            assert torch.equal(a, b) and torch.equal(a_mask, b_mask)
    # K-shot: the same subset as tile's, K objects per class counted per window (select_shots' meaning)
    per_class = Counter()
    for chip in manifest["chips"]:
        per_class.update(chip["objects"])
    assert per_class == Counter({"crop": 2, "water": 2})
    assert sum((p.counts for p in windows.plan.plans), Counter()) == per_class


def test_random_sampler_is_seeded(scene):
    windows = _windows(scene)
    with windows:
        first = [(w.raster, w.col, w.row) for w in windows.draw(12, torch.Generator().manual_seed(5))]
        again = [(w.raster, w.col, w.row) for w in windows.draw(12, torch.Generator().manual_seed(5))]
        other = [(w.raster, w.col, w.row) for w in windows.draw(12, torch.Generator().manual_seed(6))]
    assert first == again and first != other
    assert all(0 <= c <= WIDTH - SIZE and 0 <= r <= HEIGHT - SIZE for _, c, r in first)


def test_random_windows_are_block_aligned_reads_of_one_window(scene, monkeypatch):
    windows = _windows(scene)
    reads = []
    original = raster_module.read_window

    def record(src, bands, window):
        reads.append(window)
        return original(src, bands, window)

    with windows:
        monkeypatch.setattr(raster_module, "read_window", record)
        images, masks = windows.segmentation_batch(6, torch.Generator().manual_seed(0))
    assert images.shape == (6, 3, SIZE, SIZE) and masks.shape == (6, SIZE, SIZE)
    assert len(reads) >= 6  # one read per window (a window without valid pixels is drawn again)
    for window in reads:  # the window widened to the file's blocks, nothing more
        assert window.col_off % BLOCK == 0 and window.row_off % BLOCK == 0
        assert (window.col_off + window.width) % BLOCK == 0 or window.col_off + window.width == WIDTH
        assert (window.row_off + window.height) % BLOCK == 0 or window.row_off + window.height == HEIGHT
        assert window.width <= SIZE + 2 * BLOCK and window.height <= SIZE + 2 * BLOCK


def test_random_windows_label_the_subset_and_ignore_other_objects(scene):
    """K-shot: only the subset's objects are labelled; others under a window are IGNORE, never background."""
    everything, subset = _windows(scene), _windows(scene, shots=1)
    assert everything.objects == len(scene.polygons) and 0 < subset.objects < everything.objects
    labels = subset.plan.labels[0]
    with subset:
        for window in subset.draw(10, torch.Generator().manual_seed(2)):
            plan = subset.window_plan(window)
            for cls, polygon in plan.left_out:
                index = next(i for i, p in enumerate(labels.polygons) if p is polygon)
                assert not subset.labelled[0][index]
            _, mask = subset.segmentation_sample(window)
            for cls, polygon in plan.objects:  # a labelled object, clipped to the window, carries its class
                inside = shapely.intersection(polygon, shapely.box(window.col, window.row, window.col + SIZE,
                                                                   window.row + SIZE))
                x, y = np.asarray(shapely.point_on_surface(inside).coords[0]) - (window.col, window.row)
                assert mask[int(y), int(x)] in (subset.plan.classes.index(cls) + 1, IGNORE)


def test_labels_in_another_crs_are_reprojected_onto_the_raster(scene):
    """The labels file is EPSG:4326, the raster UTM: the sampler places them where the pixels show them."""
    labels = _windows(scene).plan.labels[0]
    assert len(labels.polygons) == len(scene.polygons)
    for truth in scene.polygons:
        best = max(labels.polygons, key=lambda p: shapely.intersection(p, truth).area)
        assert shapely.intersection(best, truth).area / shapely.union(best, truth).area > 0.99


def _refused(capsys, *args: object) -> str:
    """The one `error:` line of a command that exits 2."""
    assert run([str(a) for a in args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    return lines[0]


def test_chips_and_scenes_together_are_refused_in_one_line(scene, tmp_path, capsys):
    def refused(*args: object) -> str:
        return _refused(capsys, "train", "geo-seg", *args, "--work-dir", tmp_path / "w")

    assert "exactly one" in refused("--chips", tmp_path, "--scenes", scene.raster, "--labels", scene.labels)
    assert "exactly one" in refused("--work-dir", tmp_path / "x")  # neither
    assert "needs --labels" in refused("--scenes", scene.raster)
    assert "go with --scenes" in refused("--chips", tmp_path, "--shots", "3")
    assert not (tmp_path / "w").exists()


def _float_scene(scene, path: Path) -> Path:
    """The scene as float32 reflectance (0..1) with NaN nodata where it had 0."""
    with rasterio.open(scene.raster) as src:
        pixels, profile = src.read().astype(np.float32), src.profile
    pixels = np.where(pixels == 0, np.nan, pixels / 12000.0).astype(np.float32)
    profile.update(dtype="float32", nodata=math.nan)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    return path


@pytest.mark.slow
def test_float_nan_scene_trains_and_predicts_end_to_end(scene, tmp_path, capsys):
    """`train geo-seg --scenes` on float32 with NaN nodata, then `tile-predict` with the stored statistics."""
    raster = _float_scene(scene, tmp_path / "float.tif")
    work = tmp_path / "work"
    output = _cli("train", "geo-seg", "--scenes", raster, "--labels", scene.labels, "--size", SIZE, "--overlap",
                  OVERLAP, "--bands", "3,2,1", "--shots", "2", "--work-dir", work, *TRAIN)
    checkpoint = Path(output.strip().splitlines()[-1])
    assert checkpoint == work / "geo-seg.safetensors" and not any(work.glob("**/*.tif"))  # no chip written
    from domainmona.geo.segmodel import read_spec

    spec = read_spec(checkpoint)
    assert spec["size"] == SIZE and spec["bands"] == [3, 2, 1] and spec["dtypes"] == ["float32"]
    assert all(math.isfinite(s["mean"]) and 0 < s["p_high"] < 1 for s in spec["stats"])
    # --resume with other scene flags is refused; with the same ones a longer run continues
    flags = ("--scenes", raster, "--labels", scene.labels, "--size", SIZE, "--overlap", OVERLAP, "--bands", "3,2,1",
             "--shots", "2", "--work-dir", work, "--resume", *TRAIN[:-1])
    assert "iteration 2 of 3" in _cli("train", "geo-seg", *flags, "3")
    assert "the scene flags" in _refused(capsys, "train", "geo-seg", "--scenes", raster, "--labels", scene.labels,
                                         "--size", SIZE, "--overlap", OVERLAP, "--bands", "3,2,1", "--shots", "2",
                                         "--sampler", "grid", "--work-dir", work, "--resume", *TRAIN)
    out = tmp_path / "pred.tif"
    _cli("tile-predict", raster, "--checkpoint", checkpoint, "--out", out)
    with rasterio.open(raster) as src, rasterio.open(out) as dst:
        assert (dst.crs, dst.transform, dst.shape) == (src.crs, src.transform, src.shape)
        predicted, valid = dst.read(1), ~np.isnan(src.read(1))
    assert (predicted[~valid] == 255).all() and set(np.unique(predicted[valid])) <= {0, 1, 2}


@pytest.fixture(scope="module")
def objects_scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("objects")
    return write_scene(root / "scene.tif", root / "labels.gpkg",
                       SceneSpec(width=512, height=448, kind="objects", objects=14, seed=1, block=BLOCK))



def test_detection_grid_windows_are_tiles_chips(objects_scene, tmp_path):
    """Pixels (PNG chips, BGR as mmcv reads them) and DOTA objects (cut, clipped, K-shot) as `tile` writes."""
    from PIL import Image

    from domainmona.detection.dota.labels import read_dota_labels
    from domainmona.geo.chipload import detector_image

    manifest = tile_scenes([objects_scene.raster], objects_scene.labels, tmp_path / "chips",
                           TileOptions(SIZE, OVERLAP, None, "detection", shots=3, seed=0))
    windows = SceneWindows.open(SceneOptions([objects_scene.raster], objects_scene.labels, SIZE, OVERLAP, shots=3,
                                             sampler="grid"), "detection", 0)
    with windows:
        assert [w.plan.name for w in windows.grid] == [c["name"] for c in manifest["chips"]]
        for window in windows.grid:
            image, objects = windows.detection_sample(window)
            chip = np.asarray(Image.open(tmp_path / "chips" / "images" / f"{window.plan.name}.png"))
            assert np.array_equal(detector_image(image), chip[:, :, ::-1])
            written = read_dota_labels(tmp_path / "chips" / "annfiles" / f"{window.plan.name}.txt").objects
            assert [(o.cls, o.difficult) for o in objects] == [(o.cls, o.difficult) for o in written]
            assert np.allclose([o.poly for o in objects], [o.poly for o in written], atol=0.05)


def test_detection_random_windows_cut_objects_by_the_tiling_contract(objects_scene):
    from domainmona.tiling import CUT_DIFFICULT, IOF_THR, SLIVER_THR

    windows = SceneWindows.open(SceneOptions([objects_scene.raster], objects_scene.labels, SIZE, OVERLAP),
                                "detection", 0)
    cut = 0
    with windows:
        for window in windows.draw(16, torch.Generator().manual_seed(4)):
            _, objects = windows.detection_sample(window)
            box = shapely.box(window.col, window.row, window.col + SIZE, window.row + SIZE)
            iof = [shapely.intersection(p, box).area / p.area for p in windows.plan.labels[0].polygons]
            assert len(objects) <= sum(f >= SLIVER_THR for f in iof)  # slivers dropped
            assert len(objects) >= sum(f == 1 for f in iof)  # whole objects kept
            for obj in objects:
                assert (np.asarray(obj.poly) >= 0).all() and (np.asarray(obj.poly) <= SIZE).all()  # clipped
            cut += sum(o.difficult == CUT_DIFFICULT for o in objects)
            # partly visible: difficult 2, or dropped where the clip is not a quadrilateral (3 or > 5 vertices)
            assert sum(o.difficult == CUT_DIFFICULT for o in objects) <= sum(SLIVER_THR <= f < IOF_THR for f in iof)
    assert cut > 0


def test_scene_window_dataset_gives_mmrotate_items(objects_scene):
    """The dataset `train geo-det --scenes` trains on: images in the detector's layout, DOTA instances."""
    from mmrotate.registry import DATASETS

    import domainmona.geo.chipload  # noqa: F401  (registers the dataset)
    from domainmona.geo.dettrain import band_overrides, scene_dataset

    opts = SceneOptions([objects_scene.raster], objects_scene.labels, SIZE, OVERLAP, shots=2, nodata=0)
    windows = SceneWindows.open(opts, "detection", 7)
    config = scene_dataset(opts, windows.manifest)
    assert config["scenes"]["nodata"] == 0 and config["stats"] == windows.manifest["stats"]
    overrides = band_overrides(3, "micro", SIZE, config)
    assert overrides["train_dataloader.dataset.type"] == "SceneWindowDataset"
    assert overrides["train_dataloader.num_workers"] == 0  # windows are read in the training process
    assert overrides["train_dataloader.dataset.pipeline"][0]["type"] == "mmdet.LoadAnnotations"  # no file loader
    assert overrides["test_dataloader.dataset.pipeline"][0]["type"] == "mmdet.LoadImageFromFile"
    float_opts = SceneOptions([objects_scene.raster], objects_scene.labels, nodata=math.nan)
    assert scene_dataset(float_opts, windows.manifest)["scenes"]["nodata"] == "nan"  # config text has no NaN
    dataset = DATASETS.build({**config, "metainfo": {"classes": tuple(windows.plan.classes)}, "pipeline": []})
    assert len(dataset) == len(windows.plan.plans)
    items = [dataset.get_data_info(i) for i in range(3)]
    again = DATASETS.build({**config, "metainfo": {"classes": tuple(windows.plan.classes)}, "pipeline": []})
    assert all(np.array_equal(a["img"], again.get_data_info(i)["img"]) for i, a in enumerate(items))  # seeded
    for item in items:
        assert item["img"].shape == (SIZE, SIZE, 3) and item["img"].dtype == np.uint8
        for instance in item["instances"]:
            assert len(instance["bbox"]) == 8 and 0 <= instance["bbox_label"] < len(windows.plan.classes)


def test_random_windows_hold_a_subset_object_whole_or_only_labelled_background(objects_scene):
    """K-shot detection: object windows hold their object whole; background windows touch no unlabelled object."""
    from domainmona.tiling import CUT_DIFFICULT

    size = 96  # small windows: room for background between the objects
    windows = SceneWindows.open(SceneOptions([objects_scene.raster], objects_scene.labels, size, OVERLAP, shots=2),
                                "detection", 0)
    labels, labelled = windows.plan.labels[0], windows.labelled[0]
    assert 0 < labelled.sum() < len(labelled)
    kinds = Counter()
    with windows:
        for window in windows.draw(30, torch.Generator().manual_seed(8)):
            _, objects = windows.detection_sample(window)
            whole = [o for o in objects if o.difficult != CUT_DIFFICULT]
            touched = labels.query(window.col, window.row, size, size)
            assert whole or labelled[touched].all()
            kinds["object" if whole else "background"] += 1
    assert kinds["object"] > kinds["background"] > 0


@pytest.mark.slow
def test_train_geo_det_from_scenes_then_tile_predict(objects_scene, tmp_path):
    """`train geo-det --scenes` (micro Oriented R-CNN, 2 iterations) writes no chip and its checkpoint predicts."""
    import pyogrio

    work = tmp_path / "work"
    output = _cli("train", "geo-det", "--scenes", objects_scene.raster, "--labels", objects_scene.labels, "--size",
                  SIZE, "--overlap", OVERLAP, "--shots", "2", "--work-dir", work, "--backbone", "micro",
                  "--max-iters", "2")
    checkpoint = Path(output.strip().splitlines()[-1])
    assert checkpoint == work / "final.safetensors" and not (work / "split").exists()
    assert not any(work.glob("**/*.png")) and not any(work.glob("**/annfiles"))
    out = _cli("tile-predict", objects_scene.raster, "--checkpoint", checkpoint, "--out", tmp_path / "pred.gpkg",
               "--score-thr", "0.0")
    info = pyogrio.read_info(out.strip().splitlines()[-1])
    assert info["crs"].endswith("32633") and set(info["fields"]) >= {"class", "score"}

"""Hostile inputs to `segment-ct train|predict|evaluate|demo`: bad numbers (flags and --config YAML),
broken or mislabelled NIfTI files, images given as label maps, NaN voxels, outputs that are folders, files or
inputs, crafted pickles on every path that reads a torch file, and kills in the middle of each long command.

(Named test_segment_ct.py, not test_medical.py: pytest imports test modules by file name, and
tests/test_medical.py already holds that name.)
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from harness import (CASES_RUN, MARKER, NEW, Case, Interrupt, assert_one_error_line, crafted, ids, interrupted,
                     killed_then_rerun, made_new, refused, run_cli, run_subprocess, steps, temporaries, write)

from domainmona.io import claim_dir
from domainmona.medical import synthetic, transforms
from domainmona.medical.checkpoint import save_checkpoint
from domainmona.medical.settings import load_settings

TINY = {"model": {"feature_size": 12, "adapter_cfg": {"inner_dim": 8}},
        "augment": {"samples_per_volume": 1},
        "train": {"roi": 64, "max_epochs": 1, "val_every": 1, "num_workers": 0, "sw_batch_size": 1, "val_max": 1}}
SHAPE = (40, 40, 20)
LABEL_NAMES = {"0": "background", "1": "liver", "2": "spleen", "3": "kidney"}


# ------------------------------------------------------------------------------------------ generated inputs

def _nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def _scan(path: Path, seed: int = 0, nan_fraction: float = 0.0) -> Path:
    """A synthetic CT case (float32 HU, oblique affine), optionally with NaN voxels scattered through it."""
    rng = np.random.default_rng(seed)
    image, _ = synthetic.make_case(rng, SHAPE)
    image = image.astype(np.float32)
    if nan_fraction:
        image.reshape(-1)[rng.choice(image.size, int(image.size * nan_fraction), replace=False)] = np.nan
    return _nifti(path, image, synthetic.oblique_affine(np.random.default_rng(seed), (1.2, 1.2, 2.5)))


@functools.cache
def _tiny_model() -> tuple[dict, dict]:
    from domainmona.medical.model import assemble

    settings = load_settings(None, **{k: dict(v) for k, v in TINY.items()})
    torch.manual_seed(0)
    return settings, assemble(settings["model"], 4).state_dict()


def _checkpoint(path: Path, **changes) -> Path:
    settings, state = _tiny_model()
    content = dict(model=state, settings=settings, num_classes=4, label_names=LABEL_NAMES)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, **{**content, **changes})


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:max(60, int(len(data) * keep))])


def _mkdir(relative: str):
    return lambda ws: (ws / relative).mkdir(parents=True, exist_ok=True)


def _claimed(relative: str, command: str):
    return lambda ws: claim_dir(ws / relative, command)


# --------------------------------------------------------------------------------------------------- train

def _data(ws: Path, **config) -> None:
    """A 3-case task (2 train, 1 validation) and the tiny settings, with ``config`` merged over them."""
    synthetic.write_dataset(ws / "task", cases=3, shape=SHAPE, seed=3)
    settings = {section: dict(values) for section, values in TINY.items()}
    for section, values in config.items():
        settings.setdefault(section, {}).update(values)
    (ws / "tiny.yaml").write_text(yaml.safe_dump(settings))


def _config(**config):
    return lambda ws: _data(ws, **config)


def _edit_case(image=None, label=None, truncate: str | None = None):
    """Setup: the task with case 0's image and/or label replaced by an array (on the image's grid) or, for
    label="image", by a copy of the image; or one of its files truncated."""
    def setup(ws: Path) -> None:
        _data(ws)
        image_path, label_path = (ws / "task" / sub / "case_000.nii.gz" for sub in ("imagesTr", "labelsTr"))
        affine = nib.load(image_path).affine
        if isinstance(label, str):
            label_path.write_bytes(image_path.read_bytes())
        elif label is not None:
            _nifti(label_path, label, affine)
        if image is not None:
            _nifti(image_path, image, affine)
        if truncate:
            _truncate(ws / "task" / truncate / "case_000.nii.gz")
    return setup


def _datalist(edit):
    def setup(ws: Path) -> None:
        _data(ws)
        path = ws / "task" / "dataset.json"
        content = json.loads(path.read_text())
        edit(content)
        path.write_text(json.dumps(content))
    return setup


def _moved_label(ws: Path) -> None:
    _data(ws)
    label = ws / "task" / "labelsTr" / "case_000.nii.gz"
    _nifti(label, np.asarray(nib.load(label).dataobj), np.diag([2.0, 2.0, 2.0, 1.0]))


def _run_with_last(last=None, **changes):
    """Setup: the task and a claimed work dir whose checkpoints/last.pt is ``last`` (a setup) or a checkpoint."""
    def setup(ws: Path) -> None:
        _data(ws)
        claim_dir(ws / "run", "segment-ct train")
        if last is not None:
            last(ws)
        else:
            _checkpoint(ws / "run" / "checkpoints" / "last.pt", **changes)
    return setup


FLOAT_CT = np.random.default_rng(0).normal(40.0, 300.0, SHAPE).astype(np.float32)
TRAIN = ("segment-ct", "train", "--data", "{ws}/task", "--work-dir", "{ws}/run", "--config", "{ws}/tiny.yaml",
         "--gpus", "0")


def _rows(prefix: str, base: tuple[str, ...], default_setup):
    """A row maker for one command: `make(id, extra argv, expected error part, setup, argv=base)`."""
    def make(id, extra, expect, setup=default_setup, argv=base):
        return Case(f"{prefix}-{id}", argv + tuple(extra), expect, setup)
    return make


_train = _rows("train", TRAIN, _data)


TRAIN_CASES = [
    # numeric flags
    _train("max-epochs-0", ["--max-epochs", "0"], "--max-epochs: 0 must be >= 1"),
    _train("max-epochs-negative", ["--max-epochs", "-1"], "--max-epochs"),
    _train("max-epochs-text", ["--max-epochs", "ten"], "valid integer"),
    _train("roi-0", ["--roi", "0"], "multiple of 32"),
    _train("roi-negative", ["--roi", "-64"], "multiple of 32"),
    _train("roi-not-multiple", ["--roi", "80"], "multiple of 32"),
    _train("roi-32", ["--roi", "32"], "at least 64"),
    _train("gpus-negative", ["--gpus", "-1"], "--gpus"),
    _train("shots-0", ["--shots", "0"], "--shots"),
    _train("shots-negative", ["--shots", "-2"], "--shots"),
    _train("shots-too-many", ["--shots", "5"], "only 2 labelled"),
    _train("hu-min-above-max", ["--hu-min", "300"], "below --hu-max"),
    _train("hu-min-equals-max", ["--hu-min", "10", "--hu-max", "10"], "below --hu-max"),
    _train("hu-min-nan", ["--hu-min", "nan"], "not a finite number"),
    _train("hu-max-inf", ["--hu-max", "inf"], "not a finite number"),
    _train("hu-min-minus-inf", ["--hu-min", "-inf"], "not a finite number"),
    _train("feature-size-0", ["--feature-size", "0"], "--feature-size 0"),
    _train("feature-size-negative", ["--feature-size", "-12"], "--feature-size -12"),
    _train("feature-size-not-multiple", ["--feature-size", "13"], "multiple of 12"),
    _train("decoder-size-0", ["--decoder-size", "0"], "--decoder-size 0"),
    _train("decoder-size-negative", ["--decoder-size", "-24"], "--decoder-size -24"),
    _train("merging-unknown", ["--merging", "zigzag"], "--merging zigzag"),
    _train("adapter-unknown", ["--adapter", "magic"], "'magic' is not one of"),
    _train("model-unknown", ["--model", "magic"], "--model magic"),
    _train("model-unetr-swin-size", ["--model", "unetr", "--feature-size", "24"], "a SwinUNETR option"),
    _train("model-segresnet-merging", ["--model", "segresnet", "--merging", "mergingv2"], "a SwinUNETR option"),
    _train("model-segresnet-lora", ["--model", "segresnet", "--adapter", "lora"], "lora"),
    _train("model-unetr-vpt-shallow", ["--model", "unetr", "--adapter", "vpt-shallow"], "vpt-shallow"),
    # the same rules for values from --config
    _train("config-max-epochs-0", [], "--max-epochs: 0 must be >= 1", _config(train={"max_epochs": 0})),
    _train("config-lr-nan", [], "train.lr: nan is not a finite number", _config(train={"lr": float("nan")})),
    _train("config-lr-negative", [], "train.lr", _config(train={"lr": -1e-3})),
    _train("config-lr-0", [], "train.lr", _config(train={"lr": 0.0})),
    _train("config-lr-text", [], "train.lr 'fast'", _config(train={"lr": "fast"})),
    _train("config-adapter-lr-inf", [], "train.adapter_lr", _config(train={"adapter_lr": float("inf")})),
    _train("config-workers-negative", [], "train.num_workers", _config(train={"num_workers": -1})),
    _train("config-overlap-1", [], "train.overlap", _config(train={"overlap": 1.0})),
    _train("config-overlap-negative", [], "train.overlap", _config(train={"overlap": -0.1})),
    _train("config-batch-0", [], "train.batch_size", _config(train={"batch_size": 0})),
    _train("config-sw-batch-0", [], "train.sw_batch_size", _config(train={"sw_batch_size": 0})),
    _train("config-val-every-0", [], "train.val_every", _config(train={"val_every": 0})),
    _train("config-val-max-negative", [], "train.val_max", _config(train={"val_max": -1})),
    _train("config-cache-rate-2", [], "train.cache_rate", _config(train={"cache_rate": 2.0})),
    _train("config-grad-clip-0", [], "train.grad_clip", _config(train={"grad_clip": 0.0})),
    _train("config-weight-decay-negative", [], "train.weight_decay", _config(train={"weight_decay": -0.1})),
    _train("config-seed-negative", [], "train.seed", _config(train={"seed": -1})),
    _train("config-roi-text", [], "--roi 'big': must be an integer", _config(train={"roi": "big"})),
    _train("config-roi-float", [], "must be an integer", _config(train={"roi": 64.5})),
    _train("config-epochs-bool", [], "must be an integer", _config(train={"max_epochs": True})),
    _train("config-amp-text", [], "train.amp 'yes': must be true or false", _config(train={"amp": "yes"})),
    _train("config-hu-min-above-max", [], "below --hu-max", _config(preprocess={"hu_min": 500.0})),
    _train("config-spacing-0", [], "preprocess.spacing", _config(preprocess={"spacing": [1.5, 0.0, 2.0]})),
    _train("config-spacing-nan", [], "not a finite number",
           _config(preprocess={"spacing": [1.5, float("nan"), 2.0]})),
    _train("config-spacing-two", [], "three voxel sizes", _config(preprocess={"spacing": [1.5, 2.0]})),
    _train("config-orientation", [], "preprocess.orientation", _config(preprocess={"orientation": "XYZ"})),
    _train("config-orientation-repeated", [], "preprocess.orientation", _config(preprocess={"orientation": "RRS"})),
    _train("config-crop-margin-negative", [], "preprocess.crop_margin", _config(preprocess={"crop_margin": -2})),
    _train("config-flip-prob", [], "augment.flip_prob", _config(augment={"flip_prob": 1.5})),
    _train("config-intensity-prob-nan", [], "augment.intensity_prob",
           _config(augment={"intensity_prob": float("nan")})),
    _train("config-samples-0", [], "augment.samples_per_volume", _config(augment={"samples_per_volume": 0})),
    _train("config-no-pos-no-neg", [], "augment.pos and augment.neg", _config(augment={"pos": 0, "neg": 0})),
    _train("config-dropout-1", [], "model.dropout_path_rate", _config(model={"dropout_path_rate": 1.0})),
    _train("config-feature-size-0", [], "--feature-size 0", _config(model={"feature_size": 0})),
    _train("config-adapter-option-negative", [], "inner_dim", _config(model={"adapter_cfg": {"inner_dim": -1}})),
    _train("config-adapter-option-unknown", [], "no option 'depth'", _config(model={"adapter_cfg": {"depth": 2}})),
    _train("config-unknown-key", [], "unknown key(s) epochs", _config(train={"epochs": 3})),
    _train("config-unknown-section", [], "unknown section 'optim'", _config(optim={"lr": 1.0})),
    _train("config-not-a-mapping", [], "must be a YAML mapping", steps(_data, write("tiny.yaml", "- 1\n- 2\n"))),
    _train("config-invalid-yaml", [], "not a readable YAML", steps(_data, write("tiny.yaml", "train: [\n"))),
    _train("config-missing", ["--config", "{ws}/nope.yaml"], "not a readable YAML"),
    _train("config-is-a-folder", ["--config", "{ws}/task"], "not a readable YAML"),
    # missing, empty, broken and mislabelled data
    _train("data-missing", ["--data", "{ws}/nowhere"], "no such dataset folder"),
    _train("data-empty-folder", ["--data", "{ws}/empty"], "expected dataset.json", steps(_data, _mkdir("empty"))),
    _train("data-no-images", ["--data", "{ws}/pairs"], "no NIfTI images",
           steps(_data, _mkdir("pairs/images"), _mkdir("pairs/labels"))),
    _train("data-missing-label", ["--data", "{ws}/pairs"], "missing label",
           steps(_data, _mkdir("pairs/labels"), lambda ws: _scan(ws / "pairs" / "images" / "a.nii.gz"))),
    _train("image-truncated", [], "truncated", _edit_case(truncate="imagesTr")),
    _train("label-truncated", [], "truncated", _edit_case(truncate="labelsTr")),
    _train("image-not-nifti-content", [], "cannot be read as NIfTI",
           steps(_data, write("task/imagesTr/case_000.nii.gz", "not an image"))),
    _train("image-2d", [], "expected a 3-D volume", _edit_case(image=np.zeros(SHAPE[:2], np.int16))),
    _train("image-4d", [], "expected a 3-D volume", _edit_case(image=np.zeros((*SHAPE, 2), np.int16))),
    _train("label-shape-mismatch", [], "differs from image shape",
           _edit_case(label=np.zeros((40, 40, 18), np.uint8))),
    _train("label-affine-mismatch", [], "label affine differs", _moved_label),
    _train("label-is-the-image", [], "an image, not a label map", _edit_case(label="image")),
    _train("label-float-ct", [], "non-integer values", _edit_case(label=FLOAT_CT)),
    _train("label-nan", [], "NaN/inf", _edit_case(label=np.full(SHAPE, np.nan, np.float32))),
    _train("label-class-not-named", [], "beyond the dataset's classes 0..3",
           _edit_case(label=np.full(SHAPE, 7, np.uint8))),
    _train("datalist-lists-missing-file", [], "no such file",
           _datalist(lambda c: c["training"][0].update(image="./imagesTr/missing.nii.gz"))),
    _train("datalist-empty-training", [], "non-empty 'training'", _datalist(lambda c: c.update(training=[]))),
    _train("datalist-entry-without-label", [], "needs both 'image' and 'label'",
           _datalist(lambda c: c["training"][0].pop("label"))),
    _train("datalist-bad-class-keys", [], "'labels' must map class indices",
           _datalist(lambda c: c.update(labels={"liver": 1}))),
    _train("datalist-not-json", [], "not a readable JSON datalist",
           steps(_data, write("task/dataset.json", "{training"))),
    _train("datalist-is-a-volume", ["--data", "{ws}/task/imagesTr/case_000.nii.gz"], "not a readable JSON"),
    # the work dir
    _train("work-dir-is-a-file", [], "is a file, not a folder", steps(_data, write("run", "notes"))),
    _train("work-dir-holds-user-files", [], "did not write", steps(_data, write("run/thesis.tex", "x"))),
    _train("work-dir-is-the-data", ["--work-dir", "{ws}/task"], "did not write"),
    _train("existing-run-without-resume", [], "already holds a run", _run_with_last()),
    # torch files: resume and pretrained weights
    _train("resume-crafted-pickle", ["--resume"], "refused to load",
           _run_with_last(crafted("run/checkpoints/last.pt"))),
    _train("resume-not-torch", ["--resume"], "last.pt: not a readable PyTorch file",
           _run_with_last(write("run/checkpoints/last.pt", "garbage"))),
    _train("resume-other-format", ["--resume"], "not a segment-ct checkpoint",
           _run_with_last(steps(_mkdir("run/checkpoints"),
                                 lambda ws: torch.save({"state_dict": {}}, ws / "run" / "checkpoints" / "last.pt")))),
    _train("resume-other-settings", ["--resume", "--feature-size", "24"], "'model' settings differ",
           _run_with_last()),
    _train("resume-best-pt-as-last", ["--resume"], "not a last.pt", _run_with_last()),
    _train("resume-bad-settings-inside", ["--resume"], "settings are invalid",
           _run_with_last(lambda ws: _checkpoint(ws / "run" / "checkpoints" / "last.pt",
                                                 settings={**_tiny_model()[0], "train": {"roi": 0}}))),
    _train("pretrained-crafted-pickle", ["--pretrained", "{ws}/evil.pt"], "refused to load",
           steps(_data, crafted("evil.pt"))),
    _train("pretrained-missing", ["--pretrained", "{ws}/nope.pt"], "no such file"),
    _train("pretrained-not-torch", ["--pretrained", "{ws}/w.pt"], "weights file",
           steps(_data, write("w.pt", "garbage"))),
    _train("pretrained-fits-nothing", ["--pretrained", "{ws}/w.pt"], "no tensor fits",
           steps(_data, lambda ws: torch.save({"state_dict": {"head.fc.weight": torch.zeros(2, 2)}}, ws / "w.pt"))),
]


# ------------------------------------------------------------------------------------------------- predict

def _scan_and_model(ws: Path) -> None:
    _scan(ws / "scan.nii.gz")
    _checkpoint(ws / "model.pt")


PREDICT = ("segment-ct", "predict", "{ws}/scan.nii.gz", "--checkpoint", "{ws}/model.pt", "--out", "{ws}/pred")


_predict = _rows("predict", PREDICT, _scan_and_model)


def _nan_settings_checkpoint(ws: Path) -> None:
    settings = _tiny_model()[0]
    _scan(ws / "scan.nii.gz")
    _checkpoint(ws / "model.pt", settings={**settings, "preprocess": {**settings["preprocess"], "hu_min": np.nan}})


def _with_checkpoint(**changes):
    return lambda ws: (_scan(ws / "scan.nii.gz"), _checkpoint(ws / "model.pt", **changes))


PREDICT_CASES = [
    _predict("overlap-1", ["--overlap", "1"], "--overlap"),
    _predict("overlap-negative", ["--overlap", "-0.1"], "--overlap"),
    _predict("overlap-nan", ["--overlap", "nan"], "not a finite number"),
    _predict("overlap-inf", ["--overlap", "inf"], "not a finite number"),
    _predict("checkpoint-crafted-pickle", ["--checkpoint", "{ws}/evil.pt"], "refused to load",
             steps(_scan_and_model, crafted("evil.pt"))),
    _predict("checkpoint-missing", ["--checkpoint", "{ws}/nope.pt"], "no such file"),
    _predict("checkpoint-not-torch", ["--checkpoint", "{ws}/scan.nii.gz"], "scan.nii.gz: not a readable PyTorch file"),
    _predict("checkpoint-other-format", ["--checkpoint", "{ws}/other.pt"], "not a segment-ct checkpoint",
             steps(_scan_and_model, lambda ws: torch.save({"state_dict": {"w": torch.zeros(1)}}, ws / "other.pt"))),
    _predict("checkpoint-adapter-file", ["--checkpoint", "{ws}/a.safetensors"], "adapter-only file",
             steps(_scan_and_model, write("a.safetensors", "{}"))),
    _predict("checkpoint-nan-settings", [], "settings are invalid", _nan_settings_checkpoint),
    _predict("checkpoint-without-weights", [], "without model",
             lambda ws: (_scan(ws / "scan.nii.gz"), save_checkpoint(ws / "model.pt", settings={}))),
    _predict("checkpoint-weights-misfit", [], "does not fit", _with_checkpoint(num_classes=5)),
    _predict("input-missing", [], "no such file", argv=PREDICT[:2] + ("{ws}/gone.nii.gz",) + PREDICT[3:]),
    _predict("input-truncated", [], "truncated",
             steps(_scan_and_model, lambda ws: _truncate(ws / "scan.nii.gz"))),
    _predict("input-2d", [], "expected a 3-D volume",
             steps(_scan_and_model, lambda ws: _nifti(ws / "scan.nii.gz", np.zeros((40, 40), np.float32)))),
    _predict("input-4d", [], "expected a 3-D volume",
             steps(_scan_and_model, lambda ws: _nifti(ws / "scan.nii.gz", np.zeros((8, 8, 8, 3), np.float32)))),
    _predict("input-not-nifti", ["{ws}/notes.txt"], "not a NIfTI file", steps(_scan_and_model,
                                                                               write("notes.txt", "x"))),
    _predict("inputs-share-a-name", ["{ws}/b/scan.nii.gz"], "share a file name",
             steps(_scan_and_model, lambda ws: _scan(ws / "b" / "scan.nii.gz", seed=1))),
    _predict("out-is-a-file", [], "is a file", steps(_scan_and_model, write("pred", "x"))),
    _predict("out-holds-user-files", [], "did not write", steps(_scan_and_model, write("pred/notes.txt", "x"))),
    _predict("out-is-the-input-folder", ["--out", "{ws}"], "one of this command's inputs"),
    _predict("out-holds-the-input", ["{ws}/pred/scan.nii.gz"], "one of this command's inputs",
             steps(_scan_and_model, _claimed("pred", "segment-ct predict"),
                    lambda ws: _scan(ws / "pred" / "scan.nii.gz")), argv=PREDICT[:2] + PREDICT[3:]),
    _predict("out-label-map-is-a-folder", [], "is a folder",
             steps(_scan_and_model, _claimed("pred", "segment-ct predict"), _mkdir("pred/scan.nii.gz"))),
    _predict("out-user-png-same-name", [], "not written by domainmona",
             steps(_scan_and_model, _claimed("pred", "segment-ct predict"), write("pred/scan.png", "x"))),
    _predict("out-user-labels-json", [], "not written by domainmona",
             steps(_scan_and_model, _claimed("pred", "segment-ct predict"), write("pred/labels.json", "{}"))),
    _predict("out-is-a-data-folder", ["--out", "{ws}/task"], "did not write",
             steps(_scan_and_model, lambda ws: synthetic.write_dataset(ws / "task", cases=1, shape=SHAPE))),
    _predict("no-inputs", [], "missing argument", argv=PREDICT[:2] + PREDICT[3:]),
]


# ------------------------------------------------------------------------------------------------ evaluate

def _cube(value: int = 1, dtype=np.uint8) -> np.ndarray:
    array = np.zeros((12, 12, 12), dtype)
    array[2:8, 2:8, 2:8] = value
    return array


def _labels(pred=None, gt=None):
    """Setup: pred/a.nii.gz and gt/a.nii.gz, good label maps unless replaced."""
    def setup(ws: Path) -> None:
        affine = np.diag([1.5, 1.5, 2.0, 1.0])
        _nifti(ws / "pred" / "a.nii.gz", _cube() if pred is None else pred, affine)
        _nifti(ws / "gt" / "a.nii.gz", _cube() if gt is None else gt, affine)
    return setup


EVALUATE = ("segment-ct", "evaluate", "--pred", "{ws}/pred", "--gt", "{ws}/gt")
CT_HU = np.random.default_rng(1).normal(40.0, 300.0, (12, 12, 12)).astype(np.float32)
NOISY_LABELS = np.random.default_rng(2).integers(0, 4, (32, 32, 32), dtype=np.uint8)  # compresses badly


_evaluate = _rows("evaluate", EVALUATE, _labels())


EVALUATE_CASES = [
    _evaluate("pred-missing", ["--pred", "{ws}/nope"], "no such folder"),
    _evaluate("gt-missing", ["--gt", "{ws}/nope"], "no such folder"),
    _evaluate("pred-is-a-file", ["--pred", "{ws}/pred/a.nii.gz"], "no such folder"),
    _evaluate("pred-is-gt", ["--pred", "{ws}/gt"], "same folder"),
    _evaluate("no-matching-names", [], "no NIfTI prediction has a same-named ground truth",
              steps(_labels(), lambda ws: (ws / "gt" / "a.nii.gz").rename(ws / "gt" / "b.nii.gz"))),
    _evaluate("empty-folders", [], "no NIfTI prediction", steps(_mkdir("pred"), _mkdir("gt"))),
    _evaluate("shape-mismatch", [], "shape/affine differ", _labels(pred=np.zeros((12, 12, 10), np.uint8))),
    _evaluate("pred-is-a-ct-image", [], "non-integer values", _labels(pred=CT_HU)),
    _evaluate("gt-is-a-ct-image", [], "non-integer values", _labels(gt=CT_HU)),
    _evaluate("pred-is-an-integer-ct", [], "an image, not a label map", _labels(pred=CT_HU.astype(np.int16))),
    _evaluate("pred-values-too-many", [], "values 0..1000", _labels(pred=_cube(1000, np.int16))),
    _evaluate("pred-nan", [], "NaN/inf", _labels(pred=np.where(_cube() > 0, np.nan, 0).astype(np.float32))),
    _evaluate("pred-complex", [], "not class indices", _labels(pred=_cube().astype(np.complex64))),
    _evaluate("pred-truncated", [], "truncated", steps(_labels(pred=NOISY_LABELS, gt=NOISY_LABELS),
                                                        lambda ws: _truncate(ws / "pred" / "a.nii.gz"))),
    _evaluate("pred-2d", [], "expected a 3-D volume", _labels(pred=np.zeros((12, 12), np.uint8))),
    _evaluate("no-foreground", [], "neither ground truth nor predictions",
              _labels(pred=np.zeros((12, 12, 12), np.uint8), gt=np.zeros((12, 12, 12), np.uint8))),
    _evaluate("labels-json-broken", [], "not a readable labels file", steps(_labels(), write("pred/labels.json",
                                                                                              "{"))),
    _evaluate("json-is-a-folder", ["--json", "{ws}/gt"], "is a folder"),
    _evaluate("json-is-a-user-file", ["--json", "{ws}/scores.json"], "not written by domainmona",
              steps(_labels(), write("scores.json", '{"mine": 1}'))),
    _evaluate("json-is-an-input", ["--json", "{ws}/pred/a.nii.gz"], "one of this command's inputs"),
    _evaluate("json-under-a-file", ["--json", "{ws}/notes.txt/scores.json"], "is a file, not a folder",
              steps(_labels(), write("notes.txt", "x"))),
]


# ---------------------------------------------------------------------------------------------------- demo

DEMO = ("segment-ct", "demo", "--out", "{ws}/demo")
DEMO_CASES = [
    Case("demo-max-epochs-0", DEMO + ("--max-epochs", "0"), "--max-epochs: 0 must be >= 1"),
    Case("demo-max-epochs-negative", DEMO + ("--max-epochs", "-3"), "--max-epochs"),
    Case("demo-max-epochs-nan", DEMO + ("--max-epochs", "nan"), "valid integer"),
    Case("demo-out-is-a-file", DEMO, "is a file", write("demo", "x")),
    Case("demo-out-holds-user-files", DEMO, "did not write", write("demo/holiday.jpg", "x")),
    Case("demo-out-is-a-data-folder", DEMO, "did not write",
         lambda ws: synthetic.write_dataset(ws / "demo", cases=1, shape=SHAPE)),
]

# ------------------------------------- outputs under new folders, affines that place no voxel, memory bombs

SINGULAR = np.zeros((4, 4))  # what an all-zero sform gives
NAN_AFFINE = np.diag([1.0, np.nan, 1.0, 1.0])
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)) + "train: {roi: *i}\n"


def _sform(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """A NIfTI whose only affine is the sform ``affine``: nibabel writes no qform of a singular one and refuses
    NaN, so those rows of the header are written as bytes (srow_x/y/z at byte 280 of the NIfTI-1 header)."""
    import gzip

    image = nib.Nifti1Image(array, np.eye(4))
    image.set_qform(None, code=0)
    image.set_sform(np.eye(4), code=1)
    data = bytearray(image.to_bytes())
    data[280:328] = np.asarray(affine[:3], dtype="<f4").tobytes()
    path.write_bytes(gzip.compress(bytes(data)))
    return path


def _scan_with_affine(affine: np.ndarray):
    return lambda ws: (_sform(ws / "scan.nii.gz", FLOAT_CT, affine), _checkpoint(ws / "model.pt"))


def _case_affine(affine: np.ndarray):
    def setup(ws: Path) -> None:
        _data(ws)
        image = ws / "task" / "imagesTr" / "case_000.nii.gz"
        _sform(image, np.asarray(nib.load(image).dataobj), affine)
    return setup


NEW_PARENT_CASES = [
    _train("new-parent-truncated-image", [], "truncated", _edit_case(truncate="imagesTr"),
           argv=(*TRAIN[:5], f"{NEW}/run", *TRAIN[6:])),
    _train("affine-singular", [], "singular", _case_affine(SINGULAR)),
    _train("affine-nan", [], "NaN or infinite", _case_affine(NAN_AFFINE)),
    _train("config-alias-bomb", ["--config", "{ws}/bomb.yaml"], "aliases",
           steps(_data, write("bomb.yaml", ALIAS_BOMB))),
    _train("roi-beyond-memory", ["--roi", "4096"], "would need"),
    _predict("new-parent-affine-singular", [], "singular", _scan_with_affine(SINGULAR),
             argv=(*PREDICT[:6], f"{NEW}/pred")),
    _predict("affine-nan", [], "NaN or infinite", _scan_with_affine(NAN_AFFINE)),
    _evaluate("gt-affine-singular", [], "singular", steps(_labels(), lambda ws: _sform(
        ws / "gt" / "a.nii.gz", np.asarray(nib.load(ws / "gt" / "a.nii.gz").dataobj), SINGULAR))),
    Case("demo-new-parent-max-epochs-0", ("segment-ct", "demo", "--out", f"{NEW}/demo", "--max-epochs", "0"),
         "--max-epochs"),
]

CASES = TRAIN_CASES + PREDICT_CASES + EVALUATE_CASES + DEMO_CASES + NEW_PARENT_CASES


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_refused(case, tmp_path):
    refused(case, tmp_path)
    assert not (tmp_path / MARKER).exists(), "a crafted pickle ran"


def test_resume_from_a_crafted_last_pt_runs_no_code_in_a_real_process(tmp_path):
    """The issue's headline case, as a user runs it: a separate `domainmona` process, nothing in-process."""
    _run_with_last(crafted("run/checkpoints/last.pt"))(tmp_path)
    result = run_subprocess([a.replace("{ws}", str(tmp_path)) for a in TRAIN] + ["--resume"], tmp_path)
    CASES_RUN["segment-ct train"] += 1
    assert_one_error_line(result.returncode, result.stdout, result.stderr, "refused to load")
    assert not (tmp_path / MARKER).exists(), "the crafted last.pt ran its code"


# ---------------------------------------------------------------------------------------- NaN voxels in CT

def _holed_scan(path: Path) -> tuple[Path, int]:
    """A scan with 0.5% NaN voxels plus a few ±inf; returns it and how many voxels are not finite."""
    _scan(path, nan_fraction=0.005)
    image = nib.load(path)
    array = np.asarray(image.dataobj)
    array[0, 0, :3] = [np.inf, -np.inf, np.inf]
    _nifti(path, array, image.affine)
    return path, int((~np.isfinite(array)).sum())


def test_nan_and_inf_voxels_become_the_hu_floor_with_a_warning(tmp_path, capfd):
    from monai.transforms import Compose

    path, bad = _holed_scan(tmp_path / "holed.nii.gz")
    raw = np.asarray(nib.load(path).dataobj)
    preprocess = _tiny_model()[0]["preprocess"]
    loaded = Compose(transforms.preprocessing(preprocess, (transforms.IMAGE,))[:2])({"image": str(path)})
    loaded = np.asarray(loaded["image"])
    assert bad > 0.004 * raw.size
    assert (loaded[~np.isfinite(raw)] == preprocess["hu_min"]).all()
    np.testing.assert_array_equal(loaded[np.isfinite(raw)], raw[np.isfinite(raw)])
    processed = transforms.inference(preprocess)({"image": str(path)})["image"]
    assert torch.isfinite(processed).all() and 0 <= processed.min() and processed.max() <= 1
    assert f"{bad} NaN/inf voxel(s) set to the HU floor" in " ".join(capfd.readouterr().err.split())


def test_a_ct_with_nan_voxels_predicts_like_the_clean_one(tmp_path):
    clean = _scan(tmp_path / "clean" / "case.nii.gz")
    holed, bad = _holed_scan(tmp_path / "holed" / "case.nii.gz")
    model = _checkpoint(tmp_path / "model.pt")
    maps, warned = {}, {}
    for name, path in (("clean", clean), ("holed", holed)):
        code, stdout, stderr = run_cli(["segment-ct", "predict", str(path), "--checkpoint", str(model), "--out",
                                        str(tmp_path / f"pred-{name}")], tmp_path)
        assert code == 0, stderr
        maps[name] = np.asarray(nib.load(stdout.strip().splitlines()[-1]).dataobj)
        warned[name] = f"{bad} NaN/inf voxel(s) set to the HU floor" in " ".join(stderr.split())
    assert len(np.unique(maps["clean"])) > 1, "the reference prediction should not be all background"
    assert len(np.unique(maps["holed"])) > 1, "NaN voxels made the whole volume background"
    # An untrained seeded model: it reacts to every changed voxel, so this bounds what 0.5% holes may change.
    assert (maps["clean"] == maps["holed"]).mean() > 0.9
    assert warned == {"clean": False, "holed": True}


# ----------------------------------------------------------------------------------------------- kills

def _scans(ws: Path) -> None:
    for i in range(6):
        _scan(ws / "scans" / f"s{i}.nii.gz", seed=i)
    _checkpoint(ws / "model.pt")


INTERRUPT_CASES = [
    Interrupt("predict-interrupted", ("segment-ct", "predict", *(f"{{ws}}/scans/s{i}.nii.gz" for i in range(6)),
                                      "--checkpoint", "{ws}/model.pt", "--out", f"{NEW}/pred"), made_new, _scans),
    Interrupt("train-interrupted", (*TRAIN[:5], f"{NEW}/run", *TRAIN[6:]), made_new, _config(train={"max_epochs": 50})),
    Interrupt("demo-interrupted", ("segment-ct", "demo", "--out", f"{NEW}/demo", "--max-epochs", "2"), made_new),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", INTERRUPT_CASES, ids=ids(INTERRUPT_CASES))
def test_interrupted(case, tmp_path):
    interrupted(case, tmp_path)


@pytest.mark.slow
def test_predict_killed_midway_completes_on_rerun(tmp_path):
    inputs = [_scan(tmp_path / "scans" / f"s{i}.nii.gz", seed=i) for i in range(6)]
    model = _checkpoint(tmp_path / "model.pt")
    out = tmp_path / "pred"
    argv = ["segment-ct", "predict", *map(str, inputs), "--checkpoint", str(model), "--out", str(out)]
    rerun = killed_then_rerun(argv, tmp_path, ready=lambda: any(out.glob("*.png")), command="segment-ct predict")
    assert rerun.stdout.split() == [str(out / p.name) for p in inputs]
    for path in inputs:
        written = nib.load(out / path.name)
        assert written.shape == SHAPE and written.get_data_dtype() == np.uint8
        assert (out / path.name.replace(".nii.gz", ".png")).stat().st_size > 1000
    assert {k: v for k, v in json.loads((out / "labels.json").read_text()).items() if k.isdigit()} == LABEL_NAMES
    assert not temporaries(tmp_path)


@pytest.mark.slow
def test_train_killed_after_its_first_checkpoint_resumes(tmp_path):
    _data(tmp_path, train={"max_epochs": 3})
    argv = [a.replace("{ws}", str(tmp_path)) for a in TRAIN] + ["--resume"]  # the same command, run twice
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    rerun = killed_then_rerun(argv, tmp_path, ready=last.exists, command="segment-ct train")
    said = " ".join(rerun.stdout.split())
    assert "resuming" in said and ("at epoch 1 of 3" in said or "at epoch 2 of 3" in said), said
    final = Path(rerun.stdout.strip().splitlines()[-1])
    assert final.parent == last.parent and final.is_file()
    assert [m["epoch"] for m in json.loads((tmp_path / "run" / "metrics.json").read_text())] == [1, 2, 3]
    assert torch.load(last, weights_only=True)["epoch"] == 3
    assert not temporaries(tmp_path)


@pytest.mark.slow
def test_demo_killed_after_training_completes_on_rerun(tmp_path):
    out = tmp_path / "demo"
    argv = ["segment-ct", "demo", "--out", str(out), "--max-epochs", "2"]
    rerun = killed_then_rerun(argv, tmp_path, ready=(out / "run" / "checkpoints" / "last.pt").exists,
                              command="segment-ct demo")
    assert "mean foreground Dice" in rerun.stdout
    scores = json.loads((out / "evaluation.json").read_text())
    assert scores["producer"] == "domainmona" and 0.0 <= scores["mean_dice"] <= 1.0
    assert len(list((out / "predictions").glob("*.nii.gz"))) == 1
    assert not temporaries(tmp_path)

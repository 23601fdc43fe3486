"""Hostile inputs for the rotated-box detection commands: `train|test dota|star`, `eval dota`, `split dota|star`
and `demo`.

Every row is refused with one `error:` line and leaves its workspace exactly as it was; crafted pickles
(resume, --pretrained, official `.pth` checkpoints) and a checkpoint whose config holds code must not create
their marker file. Below the table: a real run resumed, the crafted resume in a subprocess, a truncated JPEG,
reruns that replace their own outputs, and kills in the middle of `split dota`, `test dota` and `train dota`
(then `--resume`); `demo` (minutes of training) has no kill case.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import (MARKER, NEW, Case, Interrupt, assert_one_error_line, crafted, ids, interrupted,
                     killed_then_rerun, made_new, refused, run_cli, run_subprocess, temporaries, write)
from PIL import Image
from safetensors.torch import save_file

from domainmona.detection.checkpoint import load_from_local_weights_only
from domainmona.detection.synthetic import SYNTHETIC_CLASSES, generate_dota_scenes
from domainmona.io import claim_dir

DOTA_NAMES = {"vehicle": "small-vehicle", "court": "tennis-court", "container": "large-vehicle"}
STAR_NAMES = {"vehicle": "car", "court": "tennis_court", "container": "truck"}
TRAINED: dict[str, Path] = {}  # the checkpoint the `trained` fixture trains once, for rows that load a model


# ------------------------------------------------------------------------------------------------ setups

def scenes(folder: str, names: dict[str, str] | None = None, n: int = 2, size: int = 256):
    """Setup: `n` generated scenes in WS/folder, their classes renamed (synthetic -> DOTA or STAR)."""

    def setup(ws: Path) -> None:
        generate_dota_scenes(ws / folder, n, size, seed=0, objects_per_image=(3, 5))
        for label in (ws / folder / "labelTxt").glob("*.txt"):
            text = label.read_text()
            for old, new in (names or {}).items():
                text = text.replace(f" {old} ", f" {new} ")
            label.write_text(text)

    return setup


def expand(argv, ws: Path) -> list[str]:
    return [a.replace("{ws}", str(ws)) for a in argv]


def both(*setups):
    def setup(ws: Path) -> None:
        for step in setups:
            step(ws)

    return setup


def edit_line(relative: str, number: int, edit):
    """Setup: replace line `number` (1-based) of WS/relative by edit(tokens) joined."""

    def setup(ws: Path) -> None:
        path = ws / relative
        lines = path.read_text().splitlines()
        lines[number - 1] = " ".join(edit(lines[number - 1].split()))
        path.write_text("\n".join(lines) + "\n")

    return setup


def coordinate(value: str):
    return lambda tokens: [value, *tokens[1:]]


def truncate(relative: str, keep: float = 0.5):
    def setup(ws: Path) -> None:
        path = ws / relative
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * keep)])

    return setup


def claimed(folder: str, command: str = "train dota1.0"):
    """Setup: WS/folder is an output folder an earlier run made."""
    return lambda ws: claim_dir(ws / folder, command)


def last_checkpoint(name: str):
    """Setup: WORK/last_checkpoint names `name` ({ws} expanded)."""
    return lambda ws: (ws / "work" / "last_checkpoint").write_text(name.replace("{ws}", str(ws)))


def torch_file(relative: str, content, keep: float = 1.0):
    def setup(ws: Path) -> None:
        torch.save(content, ws / relative)
        if keep < 1:
            truncate(relative, keep)(ws)

    return setup


def detector_file(relative: str, **metadata: str):
    """Setup: a safetensors adapter file with detector metadata (defaults: valid but for a config)."""
    meta = {"format": "domainmona-adapter", "detector_config": "model = dict(type='OrientedRCNN')",
            "classes": json.dumps(list(SYNTHETIC_CLASSES)), "patch_size": "256", "patch_gap": "64", **metadata}

    def setup(ws: Path) -> None:
        save_file({"w": torch.zeros(1)}, str(ws / relative), metadata=meta)

    return setup


def copy_trained(relative: str = "model.safetensors"):
    return lambda ws: shutil.copy(TRAINED["checkpoint"], ws / relative)


def png16(relative: str):
    def setup(ws: Path) -> None:
        Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)).save(ws / relative)

    return setup


# -------------------------------------------------------------------------------------------------- rows

RAW = scenes("raw", DOTA_NAMES)
SPLIT = ("split", "dota", "--src", "{ws}/raw", "--dst", "{ws}/out", "--workers", "1", "--size", "128", "--gap", "32")
LABEL = "raw/labelTxt/scene0000.txt"  # line 3 is the first object (after imagesource: and gsd:)
SPLIT_CASES = [
    Case("size-0", (*SPLIT, "--size", "0"), "--size", RAW),
    Case("size-negative", (*SPLIT, "--size", "-5"), "--size", RAW),
    Case("gap-negative", (*SPLIT, "--gap", "-1"), "--gap", RAW),
    Case("gap-not-below-size", (*SPLIT, "--size", "64", "--gap", "64"), "gap", RAW),
    Case("size-beyond-memory", (*SPLIT, "--size", "1000000000"), "would need", RAW),
    Case("rate-0", (*SPLIT, "--rates", "0"), "--rates", RAW),
    Case("rate-negative", (*SPLIT, "--rates", "1", "--rates", "-0.5"), "--rates", RAW),
    Case("rate-nan", (*SPLIT, "--rates", "nan"), "not a finite", RAW),
    Case("rate-inf", (*SPLIT, "--rates", "inf"), "not a finite", RAW),
    Case("workers-0", (*SPLIT, "--workers", "0"), "--workers", RAW),
    Case("workers-negative", (*SPLIT, "--workers", "-1"), "--workers", RAW),
    Case("src-missing", SPLIT, "not found: the source must hold images/"),
    Case("src-no-images", SPLIT, "no images", lambda ws: (ws / "raw" / "images").mkdir(parents=True)),
    Case("image-without-labels", SPLIT, "has no label file",
         both(RAW, lambda ws: (ws / LABEL).unlink())),
    Case("labels-without-image", SPLIT, "has no image",
         both(RAW, lambda ws: (ws / "raw/images/scene0001.png").unlink())),
    Case("two-images-one-name", SPLIT, "share the name",
         both(RAW, lambda ws: shutil.copy(ws / "raw/images/scene0000.png", ws / "raw/images/scene0000.bmp"))),
    Case("nan-coordinate", SPLIT, "scene0000.txt:3: coordinates must be finite",
         both(RAW, edit_line(LABEL, 3, coordinate("nan")))),
    Case("inf-coordinate", SPLIT, "scene0000.txt:3: coordinates must be finite",
         both(RAW, edit_line(LABEL, 3, coordinate("inf")))),
    Case("minus-inf-coordinate", SPLIT, "scene0000.txt:3: coordinates must be finite",
         both(RAW, edit_line(LABEL, 3, coordinate("-inf")))),
    Case("text-coordinate", SPLIT, "scene0000.txt:3: the first 8 fields must be numbers",
         both(RAW, edit_line(LABEL, 3, coordinate("ten")))),
    Case("short-label-line", SPLIT, "scene0000.txt:3: expected", both(RAW, edit_line(LABEL, 3, lambda t: t[:7]))),
    Case("unknown-class", SPLIT, "scene0000.txt:3: unknown class",
         both(RAW, edit_line(LABEL, 3, lambda t: [*t[:8], "dragon", "0"]))),
    Case("bad-difficult-flag", SPLIT, "difficult must be", both(RAW, edit_line(LABEL, 3, lambda t: [*t[:9], "7"]))),
    Case("binary-label-file", SPLIT, "cannot read label file", both(RAW, write(LABEL, b"\xff\xfe\x00\x81" * 10))),
    Case("empty-image", SPLIT, "cannot read image", both(RAW, write("raw/images/scene0001.png", b""))),
    Case("text-as-image", SPLIT, "cannot read image", both(RAW, write("raw/images/scene0001.png", "not a picture"))),
    Case("truncated-png", SPLIT, "scene0001.png: truncated", both(RAW, truncate("raw/images/scene0001.png"))),
    Case("16-bit-image", SPLIT, "expected an 8-bit image", both(RAW, png16("raw/images/scene0001.png"))),
    Case("dst-is-a-file", SPLIT, "is a file", both(RAW, write("out", "mine"))),
    Case("dst-under-a-file", (*SPLIT[:5], "{ws}/note/out", *SPLIT[6:]), "is a file, not a folder",
         both(RAW, write("note", "x"))),
    Case("dst-holds-user-files", SPLIT, "did not write", both(RAW, write("out/thesis.tex", "mine"))),
    Case("dst-is-src", (*SPLIT[:5], "{ws}/raw", *SPLIT[6:]), "overlaps", RAW),
    Case("dst-inside-src-images", (*SPLIT[:5], "{ws}/raw/images/out", *SPLIT[6:]), "overlaps", RAW),
    Case("dst-split-with-other-settings", SPLIT, "other settings",
         both(RAW, lambda ws: run_cli([*expand(SPLIT, ws), "--gap", "0"], ws))),
]
STAR_SPLIT = ("split", "star", *SPLIT[2:])
STAR_RAW = scenes("raw", STAR_NAMES)
SPLIT_CASES += [
    Case("star-size-0", (*STAR_SPLIT, "--size", "0"), "--size", STAR_RAW),
    Case("star-rate-nan", (*STAR_SPLIT, "--rates", "nan"), "not a finite", STAR_RAW),
    Case("star-workers-negative", (*STAR_SPLIT, "--workers", "-2"), "--workers", STAR_RAW),
    Case("star-dota-class", STAR_SPLIT, "unknown class", RAW),  # small-vehicle is DOTA's, not STAR's
    Case("star-nan-coordinate", STAR_SPLIT, "scene0000.txt:3: coordinates must be finite",
         both(STAR_RAW, edit_line(LABEL, 3, coordinate("nan")))),
    Case("star-truncated-png", STAR_SPLIT, "truncated", both(STAR_RAW, truncate("raw/images/scene0000.png", 0.3))),
    Case("star-dst-is-src", (*STAR_SPLIT[:5], "{ws}/raw", *STAR_SPLIT[6:]), "overlaps", STAR_RAW),
]

GT, DETS = "gt/P1.txt", "dets/Task1_plane.txt"
EVAL_FILES = both(write(GT, "0 0 10 0 10 10 0 10 plane 0\n20 0 30 0 30 10 20 10 plane 0\n"),
                  write(DETS, "P1 0.9 0 0 10 0 10 10 0 10\n"))
EVAL = ("eval", "dota", "--dets", "{ws}/dets", "--gt", "{ws}/gt")
EVAL_CASES = [
    Case("metric-unknown", (*EVAL, "--metric", "coco"), "metric must be one of", EVAL_FILES),
    Case("dets-missing", EVAL, "no Task1_", write(GT, "0 0 10 0 10 10 0 10 plane 0\n")),
    Case("dets-a-file", (*EVAL[:3], "{ws}/gt/P1.txt", *EVAL[4:]), "no Task1_", EVAL_FILES),
    Case("gt-missing", EVAL, "no label files", write(DETS, "P1 0.9 0 0 10 0 10 10 0 10\n")),
    Case("gt-empty", EVAL, "no label files", both(write(DETS, "P1 0.9 0 0 10 0 10 10 0 10\n"),
                                                   lambda ws: (ws / "gt").mkdir())),
    Case("gt-nan-coordinate", EVAL, "P1.txt:2: coordinates must be finite",
         both(EVAL_FILES, edit_line(GT, 2, coordinate("nan")))),
    Case("gt-inf-coordinate", EVAL, "P1.txt:1: coordinates must be finite",
         both(EVAL_FILES, edit_line(GT, 1, coordinate("inf")))),
    Case("gt-bad-difficult", EVAL, "difficult must be", both(EVAL_FILES, edit_line(GT, 1, lambda t: [*t[:9], "x"]))),
    Case("gt-binary", EVAL, "cannot read label file", both(EVAL_FILES, write(GT, b"\x80\x81\x82"))),
    Case("dets-nan-score", EVAL, "Task1_plane.txt:1: non-finite",
         both(EVAL_FILES, edit_line(DETS, 1, lambda t: [t[0], "nan", *t[2:]]))),
    Case("dets-inf-coordinate", EVAL, "Task1_plane.txt:1: non-finite",
         both(EVAL_FILES, edit_line(DETS, 1, lambda t: [*t[:5], "inf", *t[6:]]))),
    Case("dets-short-line", EVAL, "Task1_plane.txt:1: expected", both(EVAL_FILES, edit_line(DETS, 1, lambda t: t[:6]))),
    Case("dets-text-score", EVAL, "must be numbers",
         both(EVAL_FILES, edit_line(DETS, 1, lambda t: [t[0], "high", *t[2:]]))),
    Case("dets-unknown-image", EVAL, "has no label file",
         both(EVAL_FILES, edit_line(DETS, 1, lambda t: ["P9", *t[1:]]))),
    Case("dets-binary", EVAL, "cannot read detections file", both(EVAL_FILES, write(DETS, b"\xff\xfe\xfa"))),
    Case("json-is-a-folder", (*EVAL, "--json", "{ws}/res"), "is a folder",
         both(EVAL_FILES, lambda ws: (ws / "res").mkdir())),
    Case("json-under-a-file", (*EVAL, "--json", "{ws}/note/res.json"), "is a file",
         both(EVAL_FILES, write("note", "x"))),
    Case("json-is-a-gt-file", (*EVAL, "--json", "{ws}/gt/P1.txt"), "inputs", EVAL_FILES),
    Case("json-is-a-dets-file", (*EVAL, "--json", "{ws}/dets/Task1_plane.txt"), "inputs", EVAL_FILES),
    Case("json-is-a-user-file", (*EVAL, "--json", "{ws}/res.json"), "not written by domainmona",
         both(EVAL_FILES, write("res.json", '{"mine": 1}'))),
]

TEST = ("test", "dota", "--checkpoint", "{ws}/model.safetensors", "--data", "{ws}/scenes", "--out", "{ws}/out")
TEST_PTH = ("test", "dota", "--checkpoint", "{ws}/model.pth", *TEST[4:])
SCENES = scenes("scenes", n=1)
CODE_CONFIG = "import os\nos.system('touch {marker}')\n"
TEST_CASES = [
    Case("iou-nan", (*TEST, "--iou-thr", "nan"), "not a finite", SCENES),
    Case("iou-inf", (*TEST, "--iou-thr", "inf"), "not a finite", SCENES),
    Case("iou-negative", (*TEST, "--iou-thr", "-0.1"), ">= 0", SCENES),
    Case("iou-above-1", (*TEST, "--iou-thr", "1.5"), "<= 1", SCENES),
    Case("checkpoint-missing", TEST, "no such file", SCENES),
    Case("checkpoint-is-a-folder", TEST, "no such file", both(SCENES, lambda ws: (ws / "model.safetensors").mkdir())),
    Case("checkpoint-crafted-pth", TEST_PTH, "could run code", both(SCENES, crafted("model.pth"))),
    Case("checkpoint-pth-truncated", TEST_PTH, "not a readable PyTorch file",
         both(SCENES, torch_file("model.pth", {"state_dict": {"w": torch.zeros(1000)}}, keep=0.5))),
    Case("checkpoint-pth-text", TEST_PTH, "not a readable PyTorch file", both(SCENES, write("model.pth", "hello"))),
    Case("checkpoint-pth-not-a-detector", TEST_PTH, "not an Oriented R-CNN",
         both(SCENES, torch_file("model.pth", {"state_dict": {"w": torch.zeros(3)}}))),
    Case("checkpoint-config-runs-code", TEST, "not plain settings",
         both(SCENES, lambda ws: detector_file("model.safetensors",
                                               detector_config=CODE_CONFIG.format(marker=ws / MARKER))(ws))),
    Case("checkpoint-config-calls", TEST, "not plain settings",
         both(SCENES, detector_file("model.safetensors", detector_config="model = __import__('os')"))),
    Case("checkpoint-malformed-classes", TEST, "malformed detector metadata",
         both(SCENES, detector_file("model.safetensors", classes="[1, 2"))),
    Case("checkpoint-gap-not-below-size", TEST, "malformed detector metadata",
         both(SCENES, detector_file("model.safetensors", patch_gap="256"))),
    Case("checkpoint-without-detector", TEST, "not a detector checkpoint",
         both(SCENES, lambda ws: save_file({"w": torch.zeros(1)}, str(ws / "model.safetensors"),
                                           metadata={"format": "domainmona-adapter"}))),
    Case("checkpoint-text", TEST, "not a readable safetensors file", both(SCENES, write("model.safetensors", "hello"))),
    Case("data-missing", TEST, "expected an images/ folder"),
    Case("out-is-a-file", TEST, "is a file", both(SCENES, write("out", "mine"))),
    Case("out-under-a-file", (*TEST[:7], "{ws}/note/out"), "is a file, not a folder",
         both(SCENES, write("note", "mine"))),
    Case("out-is-data", (*TEST[:7], "{ws}/scenes"), "did not write", SCENES),
    Case("out-holds-user-files", TEST, "did not write", both(SCENES, write("out/notes.md", "mine"))),
    Case("out-metrics-is-users", TEST, "not written by domainmona",
         both(SCENES, claimed("out", "test"), write("out/metrics.json", '{"mine": true}'))),
    Case("out-task1-holds-user-files", TEST, "did not write",
         both(SCENES, claimed("out", "test"), write("out/task1/Task1_car.txt", "mine"))),
    Case("out-zip-is-users", TEST, "not written by domainmona",
         both(SCENES, claimed("out", "test"), write("out/task1.zip", "PK mine"))),
    Case("checkpoint-inside-out-task1", (*TEST[:3], "{ws}/out/task1/model.safetensors", *TEST[4:]), "overlaps",
         both(SCENES, claimed("out", "test"), write("out/task1/model.safetensors", "x"))),
    Case("star-iou-nan", ("test", "star", *TEST[2:], "--iou-thr", "nan"), "not a finite", SCENES),
    Case("star-checkpoint-crafted-pth", ("test", "star", *TEST_PTH[2:]), "could run code",
         both(SCENES, crafted("model.pth"))),
    Case("star-out-is-a-file", ("test", "star", *TEST[2:]), "is a file", both(SCENES, write("out", "mine"))),
    Case("star-data-missing", ("test", "star", *TEST[2:]), "expected an images/ folder"),
]
TEST_WITH_MODEL_CASES = [  # refused after the model is loaded, before anything is written
    Case("nan-label", TEST, "scene0000.txt:3: coordinates must be finite",
         both(SCENES, copy_trained(), edit_line("scenes/labelTxt/scene0000.txt", 3, coordinate("nan")))),
    Case("unknown-class", TEST, "unknown class",
         both(scenes("scenes", DOTA_NAMES, n=1), copy_trained())),
    Case("truncated-png", TEST, "truncated",
         both(SCENES, copy_trained(), truncate("scenes/images/scene0000.png"))),
    Case("no-images", TEST, "no images",
         both(SCENES, copy_trained(), lambda ws: shutil.rmtree(ws / "scenes"),
              lambda ws: (ws / "scenes" / "images").mkdir(parents=True))),
    Case("out-holds-user-files", TEST, "did not write",
         both(SCENES, copy_trained(), write("out/keep.txt", "mine"))),
]

TRAIN = ("train", "dota", "--data", "{ws}/raw", "--work-dir", "{ws}/work", "--backbone", "micro",
         "--patch-size", "128", "--patch-gap", "32", "--max-iters", "2")
WORK = claimed("work")
TRAIN_CASES = [
    Case("max-iters-0", (*TRAIN, "--max-iters", "0"), "--max-iters", RAW),
    Case("max-iters-negative", (*TRAIN, "--max-iters", "-5"), "--max-iters", RAW),
    Case("shots-0", (*TRAIN, "--shots", "0"), "--shots", RAW),
    Case("shots-negative", (*TRAIN, "--shots", "-3"), "--shots", RAW),
    Case("gpus-0", (*TRAIN, "--gpus", "0"), "--gpus", RAW),
    Case("gpus-negative", (*TRAIN, "--gpus", "-1"), "--gpus", RAW),
    Case("patch-size-0", (*TRAIN, "--patch-size", "0"), "--patch-size", RAW),
    Case("patch-gap-negative", (*TRAIN, "--patch-gap", "-8"), "--patch-gap", RAW),
    Case("patch-gap-not-below-size", (*TRAIN, "--patch-gap", "128"), "patch gap", RAW),
    Case("patch-size-beyond-memory", (*TRAIN, "--patch-size", "1000000000", "--patch-gap", "0"), "would need", RAW),
    Case("backbone-unknown", (*TRAIN, "--backbone", "resnet"), "--backbone", RAW),
    Case("adapter-unknown", (*TRAIN, "--adapter", "magic"), "--adapter", RAW),
    Case("version-unknown", (*TRAIN, "--version", "3.0"), "--version", RAW),
    Case("data-missing", TRAIN, "no such data folder"),
    Case("data-empty", TRAIN, "expected images/", lambda ws: (ws / "raw").mkdir()),
    Case("data-nan-coordinate", TRAIN, "scene0000.txt:3: coordinates must be finite",
         both(RAW, edit_line(LABEL, 3, coordinate("nan")))),
    Case("data-synthetic-classes", TRAIN, "unknown class", scenes("raw")),
    Case("data-truncated-png", TRAIN, "truncated", both(RAW, truncate("raw/images/scene0000.png"))),
    Case("data-split-nan-annfile", (*TRAIN[:3], "{ws}/patches", *TRAIN[4:]), "coordinates must be finite",
         both(write("patches/images/a.png", b""), write("patches/annfiles/a.txt", "1 1 5 1 5 5 nan 5 ship 0\n"))),
    Case("pretrained-missing", (*TRAIN, "--pretrained", "{ws}/swin.pth"), "no such file", RAW),
    Case("pretrained-crafted", (*TRAIN, "--pretrained", "{ws}/swin.pth"), "could run code",
         both(RAW, crafted("swin.pth"))),
    Case("pretrained-text", (*TRAIN, "--pretrained", "{ws}/swin.safetensors"), "not a readable safetensors",
         both(RAW, write("swin.safetensors", "weights"))),
    Case("pretrained-no-tensors", (*TRAIN, "--pretrained", "{ws}/swin.pth"), "holds no tensors",
         both(RAW, torch_file("swin.pth", {"epoch": 3}))),
    Case("work-dir-is-a-file", TRAIN, "is a file", both(RAW, write("work", "mine"))),
    Case("work-dir-under-a-file", (*TRAIN[:5], "{ws}/note/work", *TRAIN[6:]), "is a file, not a folder",
         both(RAW, write("note", "mine"))),
    Case("work-dir-holds-user-files", TRAIN, "did not write", both(RAW, write("work/notes.md", "mine"))),
    Case("work-dir-is-data", (*TRAIN[:5], "{ws}/raw", *TRAIN[6:]), "did not write", RAW),
    Case("resume-crafted-checkpoint", (*TRAIN, "--resume"), "could run code",
         both(RAW, WORK, crafted("work/iter_2.pth"), last_checkpoint("{ws}/work/iter_2.pth"))),
    Case("resume-crafted-relative", (*TRAIN, "--resume"), "could run code",
         both(RAW, WORK, crafted("work/iter_2.pth"), last_checkpoint("iter_2.pth"))),
    Case("resume-url", (*TRAIN, "--resume"), "only continues from a local file",
         both(RAW, WORK, last_checkpoint("https://example.com/iter_2.pth"))),
    Case("resume-missing-file", (*TRAIN, "--resume"), "not a file",
         both(RAW, WORK, last_checkpoint("{ws}/work/iter_9.pth"))),
    Case("resume-empty-pointer", (*TRAIN, "--resume"), "names nothing", both(RAW, WORK, last_checkpoint(""))),
    Case("resume-truncated", (*TRAIN, "--resume"), "not a readable PyTorch file",
         both(RAW, WORK, torch_file("work/iter_2.pth", {"state_dict": {"w": torch.zeros(1000)}}, keep=0.4),
              last_checkpoint("{ws}/work/iter_2.pth"))),
    Case("resume-user-work-dir", (*TRAIN, "--resume"), "did not write",
         both(RAW, write("work/notes.md", "mine"))),
]
STAR_TRAIN = ("train", "star", *TRAIN[2:])
TRAIN_CASES += [
    Case("star-max-iters-0", (*STAR_TRAIN, "--max-iters", "0"), "--max-iters", STAR_RAW),
    Case("star-shots-0", (*STAR_TRAIN, "--shots", "0"), "--shots", STAR_RAW),
    Case("star-gpus-negative", (*STAR_TRAIN, "--gpus", "-1"), "--gpus", STAR_RAW),
    Case("star-data-missing", STAR_TRAIN, "no such data folder"),
    Case("star-pretrained-crafted", (*STAR_TRAIN, "--pretrained", "{ws}/swin.pth"), "could run code",
         both(STAR_RAW, crafted("swin.pth"))),
    Case("star-resume-crafted-checkpoint", (*STAR_TRAIN, "--resume"), "could run code",
         both(STAR_RAW, claimed("work", "train star"), crafted("work/iter_2.pth"),
              last_checkpoint("{ws}/work/iter_2.pth"))),
    Case("star-work-dir-is-a-file", STAR_TRAIN, "is a file", both(STAR_RAW, write("work", "mine"))),
]

DEMO_CASES = [
    Case("out-is-a-file", ("demo", "--out", "{ws}/demo"), "is a file", write("demo", "mine")),
    Case("out-under-a-file", ("demo", "--out", "{ws}/note/demo"), "is a file, not a folder", write("note", "mine")),
    Case("out-holds-user-files", ("demo", "--out", "{ws}/demo"), "did not write", write("demo/notes.md", "mine")),
    Case("out-demo-json-is-users", ("demo", "--out", "{ws}/demo"), "not written by domainmona",
         both(claimed("demo", "demo"), write("demo/demo.json", '{"mine": 1}'))),
]

# Refused with the output under folders that do not exist yet: none may be left.
NEW_PARENT_CASES = [
    Case("new-parent-truncated-png", (*SPLIT[:5], f"{NEW}/out", *SPLIT[6:]), "truncated",
         both(RAW, truncate("raw/images/scene0001.png"))),
    Case("star-new-parent-truncated-png", (*STAR_SPLIT[:5], f"{NEW}/out", *STAR_SPLIT[6:]), "truncated",
         both(STAR_RAW, truncate("raw/images/scene0000.png", 0.3))),
    Case("new-parent-truncated-png", (*TRAIN[:5], f"{NEW}/work", *TRAIN[6:]), "truncated",
         both(RAW, truncate("raw/images/scene0000.png"))),
    Case("star-new-parent-truncated-png", (*STAR_TRAIN[:5], f"{NEW}/work", *STAR_TRAIN[6:]), "truncated",
         both(STAR_RAW, truncate("raw/images/scene0000.png"))),
    Case("new-parent-checkpoint-crafted", (*TEST_PTH[:7], f"{NEW}/out"), "could run code",
         both(SCENES, crafted("model.pth"))),
    Case("star-new-parent-checkpoint-missing", ("test", "star", *TEST[2:7], f"{NEW}/out"), "no such file", SCENES),
    Case("new-parent-is-a-file", ("demo", "--out", f"{NEW}/demo"), "is a file", write("new/deep/demo", "mine")),
]

CASES = SPLIT_CASES + EVAL_CASES + TEST_CASES + TRAIN_CASES + DEMO_CASES + NEW_PARENT_CASES


@pytest.mark.parametrize("case", CASES, ids=[f"{c.command.replace(' ', '-')}:{c.id}" for c in CASES])
def test_refused(case, tmp_path):
    refused(case, tmp_path)
    assert not (tmp_path / MARKER).exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A micro detector of the synthetic classes, trained for one iteration through the Python API."""
    from domainmona.detection.train import MICRO_WEIGHTS, TrainOptions, train

    root = tmp_path_factory.mktemp("trained")
    generate_dota_scenes(root / "scenes", 1, 256, seed=0, objects_per_image=(3, 5))
    TRAINED["checkpoint"] = train(TrainOptions(
        dataset="synthetic", data=root / "scenes", work_dir=root / "work", backbone="micro", adapter="mona",
        pretrained=MICRO_WEIGHTS, max_iters=1, classes=SYNTHETIC_CLASSES, patch_size=128, patch_gap=32,
        batch_size=1, num_workers=0))
    return TRAINED["checkpoint"]


INTERRUPT_CASES = [
    Interrupt("split-interrupted", (*SPLIT[:5], f"{NEW}/out", *SPLIT[6:]), made_new,
              scenes("raw", DOTA_NAMES, n=8, size=1024)),
    Interrupt("split-star-interrupted", (*STAR_SPLIT[:5], f"{NEW}/out", *STAR_SPLIT[6:]), made_new,
              scenes("raw", STAR_NAMES, n=8, size=1024)),
    Interrupt("train-interrupted", (*TRAIN[:5], f"{NEW}/work", *TRAIN[6:], "--max-iters", "100"), made_new, RAW),
    Interrupt("train-star-interrupted", (*STAR_TRAIN[:5], f"{NEW}/work", *STAR_TRAIN[6:], "--max-iters", "100"),
              made_new, STAR_RAW),
    Interrupt("test-interrupted", (*TEST[:7], f"{NEW}/out"), made_new,
              both(scenes("scenes", n=4, size=1024), lambda ws: copy_trained()(ws))),
    Interrupt("test-star-interrupted", ("test", "star", *TEST[2:7], f"{NEW}/out"), made_new,
              both(scenes("scenes", n=4, size=1024), lambda ws: copy_trained()(ws))),
    Interrupt("demo-interrupted", ("demo", "--out", f"{NEW}/demo"), made_new),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", INTERRUPT_CASES, ids=ids(INTERRUPT_CASES))
def test_interrupted(case, tmp_path, trained):
    interrupted(case, tmp_path)


def test_train_records_the_scenes_and_tile_predict_refuses_others(tmp_path, trained):
    """A `train dota|star` detector records its 3-band uint8 RGB patches; a 4-band uint16 scene is refused."""
    import rasterio
    from affine import Affine

    from domainmona.detection.checkpoint import RGB_PATCHES, detector_scenes
    from domainmona.geo.segmodel import read_metadata

    assert detector_scenes(read_metadata(trained), trained) == RGB_PATCHES
    with rasterio.open(tmp_path / "u16.tif", "w", driver="GTiff", width=64, height=64, count=4, dtype="uint16",
                       crs="EPSG:32633", transform=Affine(0.5, 0, 400000, 0, -0.5, 5100000)) as dst:
        dst.write(np.full((4, 64, 64), 1000, dtype="uint16"))
    code, stdout, stderr = run_cli(["tile-predict", str(tmp_path / "u16.tif"), "--checkpoint", str(trained),
                                    "--out", str(tmp_path / "d.gpkg")], tmp_path)
    assert_one_error_line(code, stdout, stderr, "trained on scenes with 3 band(s)")
    assert not (tmp_path / "d.gpkg").exists()


@pytest.mark.parametrize("case", TEST_WITH_MODEL_CASES, ids=ids(TEST_WITH_MODEL_CASES))
def test_refused_after_loading_the_model(case, tmp_path, trained):
    refused(case, tmp_path)


def test_test_reruns_replace_their_own_outputs(tmp_path, trained):
    SCENES(tmp_path)
    argv = expand(TEST, tmp_path)
    argv[3] = str(trained)
    for _ in range(2):  # the second run replaces task1/, task1.zip and metrics.json, which the first wrote
        code, stdout, stderr = run_cli(argv, tmp_path)
        assert code == 0, stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["producer"] == "domainmona" and 0.0 <= metrics["mAP"] <= 1.0 and set(metrics["classes"]) == \
        set(SYNTHETIC_CLASSES)
    with zipfile.ZipFile(tmp_path / "out" / "task1.zip") as archive:
        assert sorted(archive.namelist()) == sorted(f"Task1_{c}.txt" for c in SYNTHETIC_CLASSES)
    assert stdout.strip().splitlines()[-1] == str(tmp_path / "out" / "task1.zip")
    assert not temporaries(tmp_path)


def test_eval_json_keeps_its_keys_and_is_replaced_on_rerun(tmp_path):
    EVAL_FILES(tmp_path)
    argv = expand((*EVAL, "--json", "{ws}/res.json"), tmp_path)
    for _ in range(2):
        code, _, stderr = run_cli(argv, tmp_path)
        assert code == 0, stderr
    saved = json.loads((tmp_path / "res.json").read_text())
    assert saved["producer"] == "domainmona" and saved["mAP"] == pytest.approx(0.5454545, abs=1e-6)
    assert saved["metric"] == "voc07" and saved["classes"]["plane"] == {"ap": saved["mAP"], "num_gts": 2,
                                                                         "num_dets": 1}


def test_truncated_jpeg_is_refused_before_any_patch_of_it(tmp_path):
    """GDAL reports a truncated JPEG only when decoding: the split stops at that image, naming it."""
    RAW(tmp_path)
    jpeg = tmp_path / "raw" / "images" / "scene0001.jpg"
    Image.open(tmp_path / "raw" / "images" / "scene0001.png").save(jpeg, quality=90)
    (tmp_path / "raw" / "images" / "scene0001.png").unlink()
    truncate("raw/images/scene0001.jpg", 0.6)(tmp_path)
    code, stdout, stderr = run_cli(expand(SPLIT, tmp_path), tmp_path)
    assert_one_error_line(code, stdout, stderr, "scene0001.jpg")
    assert not list((tmp_path / "out").rglob("scene0001__*")) and not temporaries(tmp_path)


def _dota_train_argv(ws: Path, *extra: str) -> list[str]:
    return expand((*TRAIN[:-2], *extra), ws)


def _resumed_from(work: Path) -> list[int]:
    """The iterations each run in `work` resumed from, from mmengine's logs, in order."""
    logs = sorted(work.glob("2*/2*.log"))
    return [int(m) for log in logs for m in re.findall(r"resumed epoch: \d+, iter: (\d+)", log.read_text())]


def test_resume_continues_a_real_run(tmp_path):
    RAW(tmp_path)
    code, stdout, stderr = run_cli(_dota_train_argv(tmp_path, "--max-iters", "2"), tmp_path)
    assert code == 0, stderr
    final = Path(stdout.strip().splitlines()[-1])
    assert final == tmp_path / "work" / "final.safetensors" and final.is_file()
    first = final.read_bytes()
    code, stdout, stderr = run_cli(_dota_train_argv(tmp_path, "--max-iters", "4", "--resume"), tmp_path)
    assert code == 0, stderr
    assert Path(stdout.strip().splitlines()[-1]) == final and final.read_bytes() != first
    assert _resumed_from(tmp_path / "work") == [2]
    assert load_from_local_weights_only(tmp_path / "work" / "iter_4.pth")["meta"]["iter"] == 4
    assert not temporaries(tmp_path)


def test_crafted_resume_checkpoint_in_a_subprocess(tmp_path):
    case = next(c for c in TRAIN_CASES if c.id == "resume-crafted-checkpoint")
    case.setup(tmp_path)
    result = run_subprocess(case.args(tmp_path), tmp_path, timeout=300)
    assert_one_error_line(result.returncode, result.stdout, result.stderr, "could run code")
    assert not (tmp_path / MARKER).exists()
    assert not (tmp_path / "work" / "split").exists()  # refused before any work


def test_killed_split_reruns_to_the_same_patches(tmp_path):
    """Killed with its worker processes busy (they die with it), then rerun: the patches of an uninterrupted
    split, byte for byte, and no temporary left."""
    scenes("raw", DOTA_NAMES, n=3, size=768)(tmp_path)
    argv = ["split", "dota", "--src", str(tmp_path / "raw"), "--size", "128", "--gap", "0"]
    code, _, stderr = run_cli([*argv, "--dst", str(tmp_path / "whole"), "--workers", "1"], tmp_path)
    assert code == 0, stderr
    patches = tmp_path / "killed" / "images"
    killed_then_rerun([*argv, "--dst", str(tmp_path / "killed"), "--workers", "2"], tmp_path,
                      ready=lambda: patches.is_dir() and len(list(patches.iterdir())) >= 10, command="split dota")
    assert not temporaries(tmp_path)
    for folder in ("images", "annfiles"):
        whole = sorted(p.name for p in (tmp_path / "whole" / folder).iterdir())
        assert len(whole) == 3 * 36 and whole == sorted(p.name for p in (tmp_path / "killed" / folder).iterdir())
        for name in whole:
            killed, uninterrupted = tmp_path / "killed" / folder / name, tmp_path / "whole" / folder / name
            assert killed.read_bytes() == uninterrupted.read_bytes()


def _task1_rows(path: Path) -> list:
    """(image, score, x1, y1, ..., y4) of each line of a Task1 file."""
    return [(w[0], *map(float, w[1:])) for w in (line.split() for line in path.read_text().splitlines())]


def test_killed_test_reruns_to_the_same_submission(tmp_path, trained):
    """`test` killed while splitting or predicting, then rerun: the Task1 files of an uninterrupted run."""
    scenes("scenes", n=2, size=384)(tmp_path)
    argv = ["test", "dota", "--checkpoint", str(trained), "--data", str(tmp_path / "scenes")]
    code, _, stderr = run_cli([*argv, "--out", str(tmp_path / "whole")], tmp_path)
    assert code == 0, stderr
    done = tmp_path / "killed" / "patches" / ".split" / "done"
    killed_then_rerun([*argv, "--out", str(tmp_path / "killed")], tmp_path,
                      ready=lambda: done.is_dir() and any(done.iterdir()), command="test dota")
    assert not temporaries(tmp_path)
    for name in (f"Task1_{c}.txt" for c in SYNTHETIC_CLASSES):
        killed, whole = (_task1_rows(tmp_path / run / "task1" / name) for run in ("killed", "whole"))
        # the first run is in this process, the rerun in a fresh one (other thread count): float noise only
        assert [row[0] for row in killed] == [row[0] for row in whole]
        np.testing.assert_allclose([row[1] for row in killed], [row[1] for row in whole], atol=2e-6)
        np.testing.assert_allclose([row[2:] for row in killed], [row[2:] for row in whole], atol=0.011)
    assert json.loads((tmp_path / "killed" / "metrics.json").read_text())["mAP"] == pytest.approx(
        json.loads((tmp_path / "whole" / "metrics.json").read_text())["mAP"], abs=1e-6)


@pytest.mark.slow
def test_killed_training_resumes(tmp_path):
    RAW(tmp_path)
    work = tmp_path / "work"
    argv = _dota_train_argv(tmp_path, "--max-iters", "8")
    rerun = killed_then_rerun(argv, tmp_path, ready=lambda: (work / "last_checkpoint").is_file(),
                              command="train dota", rerun=[*argv, "--resume"])
    assert Path(rerun.stdout.strip().splitlines()[-1]) == work / "final.safetensors"
    assert (work / "final.safetensors").is_file() and (work / "iter_8.pth").is_file()
    resumed = _resumed_from(work)
    assert len(resumed) == 1 and 1 <= resumed[0] < 8
    assert not temporaries(tmp_path)

"""Split raw DOTA/STAR images (`src/images/`, optional `src/labelTxt/`) into overlapping patches.

Output, as mmrotate's DOTADataset reads it: `dst/images/<patch>.png` and, for labelled sources,
`dst/annfiles/<patch>.txt` (label lines without headers: mmrotate parses every line as an object).
The grid, patch names and the rule for cut objects are `domainmona.tiling`'s (shared with `tile`), image
reads in `image_reader`. Every file is written atomically and an image counts as done only once its marker in
`dst/.split/done/` exists, so a killed split resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from domainmona.boxes.labels import DotaLabels, format_dota_line, read_dota_labels
from domainmona.console import progress
from domainmona.detection.layout import refuse_overlap
from domainmona.errors import UserError
from domainmona.io import atomic_path, claim_dir
from domainmona.recipes import patch_grid
from domainmona.tiling import (IOF_THR, SLIVER_THR, PatchCounts, objects_in_window, patch_name, patch_starts,
                               scale_objects)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class SplitSettings:
    size: int
    gap: int
    rates: tuple[float, ...]
    iof_thr: float
    sliver_thr: float

    def validate(self) -> None:
        if self.size <= 0 or not 0 <= self.gap < self.size:
            raise UserError(f"need size > 0 and 0 <= gap < size, got size {self.size}, gap {self.gap}")
        if not self.rates or any(not math.isfinite(rate) or rate <= 0 for rate in self.rates):
            raise UserError(f"rates must be positive, got {list(self.rates)}")
        if not 0 <= self.sliver_thr <= self.iof_thr <= 1:
            raise UserError(f"need 0 <= sliver_thr <= iof_thr <= 1, got {self.sliver_thr} and {self.iof_thr}")


@dataclass
class SplitSummary:
    """What a split produced; `resumed` images were already done by an earlier, interrupted run."""

    dst: Path
    labelled: bool
    images: int = 0
    resumed: int = 0
    patches: int = 0
    objects: PatchCounts = field(default_factory=PatchCounts)


@dataclass
class _ImageJob:
    image: Path
    labels: DotaLabels | None
    dst: Path
    settings: SplitSettings


def _find_images(src: Path) -> list[Path]:
    images_dir = src / "images"
    if not images_dir.is_dir():
        raise UserError(f"{images_dir} not found: the source must hold images/ (and labelTxt/ when labelled)")
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    stems: dict[str, Path] = {}
    for image in images:
        if image.stem in stems:
            raise UserError(f"two images share the name '{image.stem}': {stems[image.stem].name}, {image.name}")
        stems[image.stem] = image
    return images


def _pair_labels(src: Path, images: list[Path]) -> list[Path | None]:
    labels_dir = src / "labelTxt"
    if not labels_dir.is_dir():
        return [None] * len(images)
    labels = {p.stem: p for p in labels_dir.glob("*.txt")}
    stems = {image.stem for image in images}
    orphans = sorted(set(labels) - stems)
    if orphans:
        raise UserError(f"{labels[orphans[0]]} has no image in {src / 'images'} ({len(orphans)} such label files)")
    missing = [image for image in images if image.stem not in labels]
    if missing:
        raise UserError(f"{missing[0]} has no label file {labels_dir / (missing[0].stem + '.txt')}"
                        f" ({len(missing)} such images)")
    return [labels[image.stem] for image in images]


def read_split_inputs(src: str | os.PathLike, classes: Sequence[str] | None = None, dst: str | os.PathLike | None = None
                      ) -> list[tuple[Path, DotaLabels | None]]:
    """The images of `src` with their parsed labels (None without labelTxt/), each image checked unless a
    split into `dst` has already done it: a malformed label line or an unreadable image fails fast, before
    anything is written."""
    from domainmona.detection.dota.image_reader import check_image  # loads GDAL: only when splitting

    src = Path(src)
    images = _find_images(src)
    labels = [read_dota_labels(path, classes) if path is not None else None for path in _pair_labels(src, images)]
    for image in images:
        if dst is None or not _marker_path(Path(dst), image.stem).exists():
            check_image(image)
    return list(zip(images, labels, strict=True))


def _write_patch(job: _ImageJob, name: str, pixels, lines: list[str] | None) -> None:
    with atomic_path(job.dst / "images" / f"{name}.png") as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", compress_level=1)
    if lines is not None:
        with atomic_path(job.dst / "annfiles" / f"{name}.txt") as tmp:
            tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def _split_image(job: _ImageJob) -> dict:
    """Write all patches of one image, then its done-marker; returns the marker's content."""
    from domainmona.detection.dota.image_reader import ImageSource  # loads GDAL: only when splitting

    settings = job.settings
    labels = job.labels or DotaLabels()
    counts, patches = PatchCounts(), 0
    with ImageSource(job.image, job.dst / ".split" / "cache") as source:
        for rate in settings.rates:
            image = source.at_rate(rate)
            scaled = scale_objects(labels.objects, rate)
            for y in patch_starts(image.height, settings.size, settings.gap):
                for x in patch_starts(image.width, settings.size, settings.gap):
                    lines = None
                    if job.labels is not None:
                        objects, patch_counts = objects_in_window(scaled, x, y, settings.size, settings.iof_thr,
                                                                  settings.sliver_thr)
                        counts.add(patch_counts)
                        lines = [format_dota_line(obj.poly, obj.cls, obj.difficult) for obj in objects]
                    _write_patch(job, patch_name(job.image.stem, settings.size, rate, x, y),
                                 image.read(x, y, settings.size), lines)
                    patches += 1
    marker = {"patches": patches, "objects": asdict(counts)}
    with atomic_path(_marker_path(job.dst, job.image.stem)) as tmp:
        tmp.write_text(json.dumps(marker), encoding="utf-8")
    return marker


def _marker_path(dst: Path, stem: str) -> Path:
    return dst / ".split" / "done" / f"{stem}.json"


def _check_settings(dst: Path, settings: SplitSettings, images: list[Path]) -> None:
    """A destination holds one split of one set of images: resuming with other settings or other images
    would mix patch sets (and `test` would predict scenes it was not given)."""
    path = dst / ".split" / "settings.json"
    wanted = asdict(settings)
    wanted["rates"] = list(settings.rates)
    wanted["images"] = {image.name: image.stat().st_size for image in images}
    if path.exists():
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            found = {}
        differ = sorted(key for key in wanted if not isinstance(found, dict) or found.get(key) != wanted[key])
        if differ:
            raise UserError(f"{dst} holds a split made with other settings or images (differing: {', '.join(differ)}); "
                            "use another folder")
        return
    if (dst / "images").is_dir() and any((dst / "images").iterdir()):
        raise UserError(f"{dst / 'images'} already holds files not written by this splitter; use another --dst")
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(wanted), encoding="utf-8")


def _add(summary: SplitSummary, marker: dict) -> None:
    summary.patches += marker["patches"]
    summary.objects.add(PatchCounts(**marker["objects"]))


def _end_with(parent: int) -> None:
    """Pool initializer: on Linux a worker is killed with the split process (kill -9 included), so that it
    does not go on writing patches beside the rerun."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends the pool


def split_dataset(src: str | os.PathLike, dst: str | os.PathLike, size: int | None = None, gap: int | None = None,
                  rates: Sequence[float] = (1.0,), workers: int | None = None,
                  classes: Sequence[str] | None = None, iof_thr: float = IOF_THR,
                  sliver_thr: float = SLIVER_THR) -> SplitSummary:
    """Split every image of `src` into `size` patches overlapping by `gap` (default: the recipe's grid), at each
    rescaling `rate`.

    Objects at least `iof_thr` inside a patch stay as labelled, partly visible ones (at least
    `sliver_thr` inside) become difficult 2, smaller slivers are dropped, cut objects are clipped to the
    patch (`domainmona.tiling.objects_in_window`); labels naming a class outside
    `classes` (when given) are an error. `workers` processes (default: all cores) split images in parallel.
    """
    src, dst = Path(src), Path(dst)
    grid = patch_grid()  # the recipes' grid where not given
    size, gap = grid[0] if size is None else size, grid[1] if gap is None else gap
    settings = SplitSettings(int(size), int(gap), tuple(float(r) for r in rates), float(iof_thr), float(sliver_thr))
    settings.validate()
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    inputs = read_split_inputs(src, classes, dst)
    refuse_overlap([dst], [src / "images", src / "labelTxt"])
    claim_dir(dst, "split")
    _check_settings(dst, settings, [image for image, _ in inputs])
    summary = SplitSummary(dst=dst, labelled=inputs[0][1] is not None, images=len(inputs))
    jobs = []
    for image, label in inputs:
        marker = _marker_path(dst, image.stem)
        if marker.exists():
            summary.resumed += 1
            _add(summary, json.loads(marker.read_text(encoding="utf-8")))
        else:
            jobs.append(_ImageJob(image, label, dst, settings))
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    with progress() as bar:
        task = bar.add_task(f"split {src.name}", total=len(inputs), completed=summary.resumed)
        if workers == 1:
            for job in jobs:
                _add(summary, _split_image(job))
                bar.advance(task)
            return summary
        # spawn: workers must not inherit the progress bar's thread and locks through fork
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_end_with, initargs=(os.getpid(),)) as pool:
            # Ctrl-C reaches the whole process group: a worker still starting (importing site) would die with a
            # "Fatal Python error" dump. Spawned with SIGINT blocked (the mask survives exec), a worker holds it
            # pending until its initializer ignores it; the parent's own Ctrl-C is delivered once unblocked.
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                futures = [pool.submit(_split_image, job) for job in jobs]
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            try:
                for future in as_completed(futures):
                    _add(summary, future.result())
                    bar.advance(task)
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    return summary

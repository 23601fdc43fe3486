"""Boxes shared by the tiling contract (`domainmona.tiling`), detection and geo: numpy and shapely only.

Modules: `geometry` (quadrilateral <-> le90 rotated box, DOTA vertex order, `polygon_to_dota_quad`), `labels`
(`DotaObject`, DOTA label files), `detections` (`Detections`). This package imports nothing from
`domainmona.detection` or `domainmona.geo` (tests/test_layers.py checks it); detection and geo import it.
"""

from domainmona.boxes.detections import Detections
from domainmona.boxes.geometry import normalise_quads, obb_to_poly, poly_to_obb, polygon_to_dota_quad
from domainmona.boxes.labels import DotaLabels, DotaObject, read_dota_labels, write_dota_labels

__all__ = ["Detections", "DotaLabels", "DotaObject", "normalise_quads", "obb_to_poly", "poly_to_obb",
           "polygon_to_dota_quad", "read_dota_labels", "write_dota_labels"]

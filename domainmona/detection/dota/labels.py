"""DOTA label files and `DotaObject`: they live in `domainmona.boxes.labels` (shared by the tiling contract,
detection and geo); re-exported here for the imports that name this module."""

from domainmona.boxes.labels import (DotaLabels, DotaObject, format_dota_line, normalise_quads, obb_to_poly,
                                     poly_to_obb, polygon_to_dota_quad, read_dota_labels, write_dota_labels)

__all__ = ["DotaLabels", "DotaObject", "format_dota_line", "normalise_quads", "obb_to_poly", "poly_to_obb",
           "polygon_to_dota_quad", "read_dota_labels", "write_dota_labels"]

"""Quadrilateral <-> le90 rotated box conversions: they live in `domainmona.boxes.geometry` (shared by the
tiling contract, detection and geo); re-exported here for the imports that name this module."""

from domainmona.boxes.geometry import (as_quads, normalise_quads, obb_to_poly, poly_to_obb, polygon_to_dota_quad,
                                       signed_areas)

__all__ = ["as_quads", "normalise_quads", "obb_to_poly", "poly_to_obb", "polygon_to_dota_quad", "signed_areas"]

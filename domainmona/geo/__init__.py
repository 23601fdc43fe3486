"""GeoTIFF tiling and whole-scene prediction."""

"""Patch names and the sliding-window grid: they live in `domainmona.tiling` (one contract for `split dota`,
`tile` and the scene samplers); re-exported here for the imports that name this module."""

from domainmona.tiling import PatchName, parse_patch_name, patch_name, patch_starts

__all__ = ["PatchName", "parse_patch_name", "patch_name", "patch_starts"]

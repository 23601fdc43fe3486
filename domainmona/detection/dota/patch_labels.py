"""Which objects a patch keeps, and how: the rule lives in `domainmona.tiling` (one contract for `split dota`,
`tile` and the scene samplers); re-exported here for the imports that name this module."""

from domainmona.tiling import CUT_DIFFICULT, PatchCounts, ScaledObjects, objects_in_window, scale_objects

__all__ = ["CUT_DIFFICULT", "PatchCounts", "ScaledObjects", "objects_in_window", "scale_objects"]

"""The DOTA format: patch splitting, merging patch detections, Task1 files and their evaluation.

Modules: `split` (`split_dataset`), `merge` (`merge_patch_detections`, `write_task1`, `zip_task1`), `evaluate`
(`evaluate_task1`), `polygon_iou`. Label files, `DotaObject`, `Detections` and the quad geometry live in
`domainmona.boxes`, patch names and cut objects in `domainmona.tiling`; `labels`, `geometry`, `patch_names`
and `patch_labels` here re-export them. Import from the modules: `merge` needs torch and mmcv's compiled ops
at call time.
"""

"""The DOTA format: labels, patch splitting, merging patch detections, Task1 files and their evaluation.

Modules: `labels` (read/write label files, geometry helpers), `split` (`split_dataset`), `patch_names`
(`parse_patch_name`), `merge` (`merge_patch_detections`, `write_task1`, `zip_task1`), `evaluate`
(`evaluate_task1`). Import from the modules: `merge` needs torch and mmcv's compiled ops at call time.
"""

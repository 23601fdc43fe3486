# Oriented R-CNN (le90), Mona-Swin-T + FPN on DOTA v1.0 (15 classes), STAR-MMRotate schedule.
_base_ = [
    '../_base_/models/oriented-rcnn-le90_mona-swin-t_fpn.py', '../_base_/datasets/dota.py',
    '../_base_/schedules/adamw_12e.py', '../_base_/default_runtime.py'
]
model = dict(roi_head=dict(bbox_head=dict(num_classes=15)))

# Oriented R-CNN (le90), Mona-Swin-B + FPN on DOTA v2.0 (18 classes), STAR-MMRotate schedule.
_base_ = [
    '../_base_/models/oriented-rcnn-le90_mona-swin-b_fpn.py', '../_base_/datasets/dotav2.py',
    '../_base_/schedules/adamw_12e.py', '../_base_/default_runtime.py'
]
model = dict(roi_head=dict(bbox_head=dict(num_classes=18)))

# Swin-B (ImageNet-22k 224 window 7 layout) instead of Swin-T; the rest as the Swin-T model.
_base_ = './oriented-rcnn-le90_mona-swin-t_fpn.py'
model = dict(
    backbone=dict(embed_dims=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], drop_path_rate=0.3),
    neck=dict(in_channels=[128, 256, 512, 1024]))

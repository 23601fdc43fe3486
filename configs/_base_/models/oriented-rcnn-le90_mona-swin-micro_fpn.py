# A "micro" Swin (~0.4M backbone parameters) with a slim FPN and heads, for CPU runs, tests and the
# demo. Its pretrained weights ship in domainmona/assets/ (see domainmona/detection/pretrain_micro.py).
_base_ = './oriented-rcnn-le90_mona-swin-t_fpn.py'
model = dict(
    backbone=dict(embed_dims=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], drop_path_rate=0.0),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=300),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=300),
        rcnn=dict(nms_pre=500, max_per_img=200)))

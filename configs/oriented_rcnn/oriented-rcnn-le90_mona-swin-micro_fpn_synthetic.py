# Micro Mona-Swin Oriented R-CNN for CPU runs, tests and `domainmona demo`: 256x256 patches, batch 4,
# 0 dataloader workers. Classes are set per run (`domainmona.detection.config.set_classes`); the
# backbone weights default to the shipped micro Swin (domainmona/assets/micro_swin.safetensors).
_base_ = [
    '../_base_/models/oriented-rcnn-le90_mona-swin-micro_fpn.py', '../_base_/datasets/dota.py',
    '../_base_/schedules/adamw_12e.py', '../_base_/default_runtime.py'
]
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False)
val_dataloader = dict(num_workers=0, persistent_workers=False)
test_dataloader = dict(num_workers=0, persistent_workers=False)
optim_wrapper = dict(optimizer=dict(lr=1e-3))

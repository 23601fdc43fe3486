# STAR-MMRotate's Oriented R-CNN schedule: AdamW lr 1e-4, weight decay 0.05, 12 epochs, gradient clipping
# (clipping also guards against the NaN losses reported with mmrotate 1.x).
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=12)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]

# No backbone lr multiplier: with an adapter method only the adapter trains inside the backbone and it
# needs the full learning rate. Norms and relative position tables get no weight decay.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0,
                       custom_keys={'relative_position_bias_table': dict(decay_mult=0.0)}),
    clip_grad=dict(max_norm=35, norm_type=2))

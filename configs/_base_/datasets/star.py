# STAR (48 classes, scenes up to ~28k x 31k px) split into 1024 patches (gap 200), DOTA-style labels.
# mmrotate has no STAR dataset type: DOTADataset with STAR's classes, read from their one home,
# domainmona.detection.classes.STAR (STAR-MMRotate's STARDataset.CLASSES, in that order).
_base_ = './dota.py'
from domainmona.detection.classes import STAR as STAR_CLASSES  # noqa: E402

data_root = 'data/split_ss_star/'
metainfo = dict(classes=STAR_CLASSES)
train_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo))
val_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo))
test_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo))
del STAR_CLASSES  # not a config key of its own

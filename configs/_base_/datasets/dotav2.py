# DOTA v2.0 (18 classes: v1.5 + airport, helipad).
_base_ = './dota.py'
dataset_type = 'DOTAv2Dataset'
data_root = 'data/split_ss_dota2_0/'
train_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
test_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))

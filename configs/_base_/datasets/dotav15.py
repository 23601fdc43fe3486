# DOTA v1.5 (16 classes: v1.0 + container-crane), same patches as v1.0.
_base_ = './dota.py'
dataset_type = 'DOTAv15Dataset'
data_root = 'data/split_ss_dota1_5/'
train_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
test_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))

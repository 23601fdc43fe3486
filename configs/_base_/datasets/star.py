# STAR (48 classes, scenes up to ~28k x 31k px) split into 1024 patches (gap 200), DOTA-style labels.
# mmrotate has no STAR dataset type: DOTADataset with STAR's classes (the order of
# domainmona.detection.classes.STAR, from STAR-MMRotate's STARDataset.CLASSES).
_base_ = './dota.py'
data_root = 'data/split_ss_star/'
metainfo = dict(classes=(
    'ship', 'boat', 'crane', 'goods_yard', 'tank', 'storehouse', 'breakwater', 'dock', 'airplane',
    'boarding_bridge', 'runway', 'taxiway', 'terminal', 'apron', 'gas_station', 'truck', 'car',
    'truck_parking', 'car_parking', 'bridge', 'cooling_tower', 'chimney', 'vapor', 'smoke', 'genset',
    'coal_yard', 'lattice_tower', 'substation', 'wind_mill', 'cement_concrete_pavement', 'toll_gate',
    'flood_dam', 'gravity_dam', 'ship_lock', 'ground_track_field', 'basketball_court', 'engineering_vehicle',
    'foundation_pit', 'intersection', 'soccer_ball_field', 'tennis_court', 'tower_crane',
    'unfinished_building', 'arch_dam', 'roundabout', 'baseball_diamond', 'stadium', 'containment_vessel'))
train_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo))
val_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo))
test_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo))

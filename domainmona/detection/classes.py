"""Class names of the DOTA versions and STAR, in the order their official tools index them.

Configs and the Task1 writer index classes by position, so the order is part of the contract. STAR's list
is the one in STAR-MMRotate's `mmrotate/datasets/star.py` (STARDataset.CLASSES).
"""

from __future__ import annotations

DOTA_V1_0: tuple[str, ...] = (
    "plane", "baseball-diamond", "bridge", "ground-track-field", "small-vehicle", "large-vehicle", "ship",
    "tennis-court", "basketball-court", "storage-tank", "soccer-ball-field", "roundabout", "harbor",
    "swimming-pool", "helicopter",
)
DOTA_V1_5: tuple[str, ...] = DOTA_V1_0 + ("container-crane",)
DOTA_V2_0: tuple[str, ...] = DOTA_V1_5 + ("airport", "helipad")

STAR: tuple[str, ...] = (
    "ship", "boat", "crane", "goods_yard", "tank", "storehouse", "breakwater", "dock", "airplane",
    "boarding_bridge", "runway", "taxiway", "terminal", "apron", "gas_station", "truck", "car",
    "truck_parking", "car_parking", "bridge", "cooling_tower", "chimney", "vapor", "smoke", "genset",
    "coal_yard", "lattice_tower", "substation", "wind_mill", "cement_concrete_pavement", "toll_gate",
    "flood_dam", "gravity_dam", "ship_lock", "ground_track_field", "basketball_court", "engineering_vehicle",
    "foundation_pit", "intersection", "soccer_ball_field", "tennis_court", "tower_crane",
    "unfinished_building", "arch_dam", "roundabout", "baseball_diamond", "stadium", "containment_vessel",
)

DATASETS: dict[str, tuple[str, ...]] = {
    "dota1.0": DOTA_V1_0,
    "dota1.5": DOTA_V1_5,
    "dota2.0": DOTA_V2_0,
    "star": STAR,
}

"""CT segmentation with Mona-3D in MONAI SwinUNETR."""

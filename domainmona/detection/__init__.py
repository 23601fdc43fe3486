"""Rotated-box detection on DOTA/STAR with Mona-Swin inside mmrotate."""

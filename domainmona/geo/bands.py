"""The detector's per-band normalisation on other than 3 bands (`train geo-det`). The input filters follow the
core's rule (`domainmona.adapters.bands`, applied as pretrained weights load): an N-band image whose other bands
equal the mean of its R, G, B bands gives the RGB image's features.

Detection normalises uint8 chips per band with the RGB means and stds of the pretrained recipe; other bands
get the mean of those three, as they get the mean filter.
"""

from __future__ import annotations

from domainmona.adapters.bands import inflate_rgb_filters  # noqa: F401  (its old home; scripts import it here)


def band_normalisation(rgb_mean: list[float], rgb_std: list[float], bands: int) -> tuple[list[float], list[float]]:
    """Per-band mean and std of the detector's input from the RGB ones (module docstring)."""
    grey_mean, grey_std = sum(rgb_mean) / 3, sum(rgb_std) / 3
    if bands < 3:
        return [grey_mean] * bands, [grey_std] * bands
    return list(rgb_mean) + [grey_mean] * (bands - 3), list(rgb_std) + [grey_std] * (bands - 3)

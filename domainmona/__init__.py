"""domainmona: Mona adapters for remote-sensing and medical-imaging vision backbones."""

from domainmona.detection.mmcv_ext import install_finder as _install_mmcv_ext_finder

__version__ = "0.1.0"

# mmcv installed without its compiled extension (the default install) imports through domainmona's
# torch-native kernels; a compiled extension, where present, is found first.
_install_mmcv_ext_finder()

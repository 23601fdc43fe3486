"""A stand-in for onedl-mmcv's compiled extension `mmcv._ext`, used when mmcv was installed without it.

Why by hand: no wheel of onedl-mmcv with its compiled ops exists for Python 3.11-3.13 with torch 2.x (PyPI
has only the sdist), and building it costs every user about twelve minutes, a C++ toolchain and, for CUDA
kernels, nvcc. Every `mmcv.ops` module fetches its kernels at import through
`ext_loader.load_ext('_ext', [names])`, which imports `mmcv._ext` and asserts each name exists; without the
extension, importing mmrotate or mmdet fails on the first one. No library offers those kernels in plain
torch, so this module answers that import: the kernels the Oriented R-CNN (le90) path calls come from
`domainmona.detection.rotated_ops` (torch-native, any device), and every other kernel name resolves to a
function that stops with one line naming the op and how to get the compiled build.

`install_finder()` (run by `import domainmona`) appends a meta-path finder *after* Python's own finders, so a
compiled `_ext` shared object, when installed, is always found first and this module never loads.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

NAME = 'mmcv._ext'
MARKER = '__domainmona_stand_in__'
COMPILE_HINT = 'build mmcv with its compiled ops: DOMAINMONA_MMCV_OPS=compile make setup'


def _missing(op: str):
    """A kernel nobody implemented: the call, not the import, is refused, so unrelated ops still import."""

    def kernel(*args, **kwargs):
        from domainmona.errors import UserError

        raise UserError(f"mmcv op '{op}' needs mmcv's compiled extension, which is not installed, and "
                        f"domainmona has no torch-native kernel for it; {COMPILE_HINT}")

    kernel.__name__ = op
    return kernel


class _StandIn(importlib.abc.Loader):
    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        from domainmona.detection.rotated_ops import TorchKernels

        for op in TorchKernels.OPS:
            setattr(module, op, getattr(TorchKernels, op))
        module.get_compiler_version = lambda: 'none (domainmona torch-native kernels)'
        module.get_compiling_cuda_version = lambda: 'not available'
        setattr(module, MARKER, True)

        def __getattr__(op: str):  # PEP 562: every other kernel name mmcv.ops asks for at import
            if op.startswith('__'):
                raise AttributeError(op)
            return _missing(op)

        module.__getattr__ = __getattr__


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != NAME:
            return None
        return importlib.machinery.ModuleSpec(NAME, _StandIn())


def install_finder() -> None:
    """Serve `mmcv._ext` where no compiled one is installed (idempotent; imports nothing heavy)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())


def compiled_ops_installed() -> bool:
    """Whether `mmcv._ext` is mmcv's compiled extension rather than this stand-in."""
    module = importlib.import_module(NAME)
    return not getattr(module, MARKER, False)


def build_name() -> str:
    """The installed mmcv build in words, for `doctor`."""
    import mmcv

    if compiled_ops_installed():
        from mmcv.ops import get_compiling_cuda_version

        cuda = get_compiling_cuda_version()
        kind = 'CPU' + ('' if cuda == 'not available' else f' + CUDA {cuda}')
        return f"onedl-mmcv {mmcv.__version__} with compiled ops ({kind})"
    return f"onedl-mmcv {mmcv.__version__} without compiled ops (domainmona's torch-native kernels)"

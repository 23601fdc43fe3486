"""Atomic outputs: renamed into place only on success, with the final name's format and normal permissions."""

import os
import stat

import nibabel as nib
import numpy as np
import pytest

from domainmona.io import atomic_dir, atomic_path


def test_atomic_path_keeps_double_suffix_so_nibabel_writes_gzip(tmp_path):
    final = tmp_path / "case.nii.gz"
    with atomic_path(final) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == final.parent
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), tmp)
    assert final.read_bytes()[:2] == b"\x1f\x8b"  # gzip magic: nibabel chose the format from the suffix
    assert list(tmp_path.iterdir()) == [final]


def test_atomic_path_leaves_nothing_on_failure_and_keeps_the_old_file(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert final.read_text() == "old" and list(tmp_path.iterdir()) == [final]


def test_atomic_outputs_get_umask_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.bin") as tmp:
            tmp.write_bytes(b"x")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("y")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert (tmp_path / "d" / "f").read_text() == "y"

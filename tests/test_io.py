"""domainmona.io: atomic outputs, stale temporaries, output folders and files that are never a user's, safe torch loads."""

import os
import stat
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from domainmona.errors import UserError
from domainmona.io import (RECORD, atomic_dir, atomic_path, claim_dir, claim_file, load_torch, os_error_line,
                           read_record, read_yaml, remove_stale_temps, scratch_dir, undo_folders_on_failure,
                           write_json)


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
        with atomic_dir(tmp_path / "d", "test") as tmp:
            (tmp / "f").write_text("y")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert (tmp_path / "d" / "f").read_text() == "y"


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_temporaries_of_killed_runs_are_removed_by_the_next_write(tmp_path):
    final = tmp_path / "scene.pred.tif"
    dead, live = _dead_pid(), os.getppid()
    stale_file = tmp_path / f".scene.pred.tif.{dead}.0badcafe.tmp.tif"
    stale_dir = tmp_path / f".scene.pred.tif.{dead}.0badcafe.tmp"
    running = tmp_path / f".scene.pred.tif.{live}.12345678.tmp.tif"  # another live process's write
    other = tmp_path / f".other.tif.{dead}.0badcafe.tmp.tif"
    for path in (stale_file, running, other):
        path.write_bytes(b"half")
    stale_dir.mkdir()
    (stale_dir / "part").write_text("x")
    with atomic_path(final) as tmp:
        tmp.write_text("done")
    assert final.read_text() == "done"
    assert not stale_file.exists() and not stale_dir.exists()
    assert running.exists() and other.exists()  # not ours to remove: alive, or another output
    assert remove_stale_temps(tmp_path / "other.tif") == [other]


def test_scratch_dir_is_removed_and_named_for_cleanup(tmp_path):
    with scratch_dir(tmp_path / "out.tif") as scratch:
        assert scratch.parent == tmp_path and scratch.name.startswith(f".out.tif.{os.getpid()}.")
        (scratch / "tiled.tif").write_text("x")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_only_its_own_untouched_folder(tmp_path):
    final = tmp_path / "chips"
    with atomic_dir(final, "tile") as tmp:
        (tmp / "images").mkdir()
        (tmp / "images" / "a.png").write_text("a")
    assert read_record(final)["files"] == ["images/a.png"]
    with atomic_dir(final, "tile") as tmp:  # a rerun replaces it
        (tmp / "b.png").write_text("b")
    assert sorted(p.name for p in final.iterdir()) == [RECORD, "b.png"]
    with pytest.raises(UserError, match="holds files domainmona did not write"):
        with atomic_dir(final, "another command"):
            pass
    (final / "index.html").write_text("the user's")
    with pytest.raises(UserError, match=r"1 file\(s\) domainmona did not write there \(e.g. index.html\)"):
        with atomic_dir(final, "tile"):
            pass
    assert (final / "index.html").read_text() == "the user's" and (final / "b.png").read_text() == "b"


def test_atomic_dir_refuses_user_folders_files_and_inputs_inside(tmp_path):
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "manifest.json").write_text("{}")  # looking like an output is not enough
    (user / "scene.tif").write_text("input")
    for final, inputs, message in ((user, [], "holds files domainmona did not write"),
                                   (user, [user / "scene.tif"], "an input of this command"),
                                   (user / "scene.tif", [], "is a file, not a folder")):
        with pytest.raises(UserError, match=message):
            with atomic_dir(final, "tile", inputs):
                pass
    assert sorted(p.name for p in user.iterdir()) == ["manifest.json", "scene.tif"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(empty, "tile") as tmp:
        (tmp / "x").write_text("x")
    assert (empty / "x").is_file()


def test_atomic_dir_failure_keeps_the_previous_folder_and_leaves_nothing(tmp_path):
    final = tmp_path / "task1"
    with atomic_dir(final, "task1") as tmp:
        (tmp / "Task1_ship.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(final, "task1") as tmp:
            (tmp / "Task1_ship.txt").write_text("new, half")
            raise KeyboardInterrupt
    assert (final / "Task1_ship.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task1"]


def test_claim_dir_accepts_new_empty_or_own_folders_only(tmp_path):
    work = claim_dir(tmp_path / "work", "train dota")
    assert read_record(work) == {"producer": "domainmona", "command": "train dota"}
    (work / "epoch_1.pth").write_text("x")
    assert claim_dir(work, "train dota") == work  # a rerun or --resume
    (tmp_path / "empty").mkdir()
    claim_dir(tmp_path / "empty", "test dota")
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds files domainmona did not write"):
        claim_dir(home, "segment-ct predict")
    with pytest.raises(UserError, match="is a file, not a folder"):
        claim_dir(home / "notes.txt", "segment-ct predict")
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]


def test_claim_file_refuses_folders_inputs_and_foreign_files(tmp_path):
    scene = tmp_path / "scene.tif"
    scene.write_text("pixels")
    foreign = tmp_path / "scores.json"
    foreign.write_text('{"mine": 1}')
    for path, inputs, message in ((tmp_path, [], "is a folder"), (scene, [scene], "one of this command's inputs"),
                                  (tmp_path / "x" / ".." / "scene.tif", [scene], "one of this command's inputs"),
                                  (foreign, [], "was not written by domainmona"),
                                  (scene / "out.json", [], "is a file, not a folder")):
        with pytest.raises(UserError, match=message):
            claim_file(path, inputs)
    ours = write_json(tmp_path / "ours.json", {"map": 0.5})
    assert claim_file(ours) == ours  # a rerun may replace its own output
    assert claim_file(foreign, is_ours=lambda p: True) == foreign
    assert claim_file(tmp_path / "new.json", [scene]) == tmp_path / "new.json"


def test_load_torch_never_runs_pickled_code(tmp_path):
    import torch

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Payload()}, evil)
    with pytest.raises(UserError, match="refused to load .*could run code"):
        load_torch(evil)
    assert not marker.exists()
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.ones(2), "epoch": 3, "names": ["a"]}, plain)
    assert load_torch(plain)["epoch"] == 3
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match="not a readable PyTorch file"):
        load_torch(junk)
    with pytest.raises(UserError, match="no such file"):
        load_torch(tmp_path / "missing.pth")


def test_a_zombie_writer_counts_as_dead(tmp_path):
    """A killed worker stays a zombie until reaped (never, under some container inits): its temporaries go."""
    import time

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    stat = f"/proc/{child.pid}/stat"
    deadline = time.monotonic() + 30
    while open(stat).read().rsplit(")", 1)[1].split()[0] != "Z":  # exited, not yet reaped by us
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stale = tmp_path / f".x.tif.{child.pid}.0badcafe.tmp.tif"
    stale.write_text("half")
    try:
        assert remove_stale_temps(tmp_path / "x.tif") == [stale]
    finally:
        child.wait()


def test_a_failed_write_removes_the_parents_it_made(tmp_path):
    """`--out out/x/chips` refused halfway: neither chips' temporary nor out/ nor out/x stays."""
    with pytest.raises(UserError):
        with atomic_dir(tmp_path / "out" / "x" / "chips", "tile") as tmp:
            (tmp / "chip.tif").write_bytes(b"x")
            raise UserError("truncated raster")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "a" / "b.json") as tmp:
            tmp.write_text("{")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_undo_keeps_folders_holding_work_and_says_which(tmp_path):
    (tmp_path / "mine").mkdir()
    kept: list = []
    with pytest.raises(KeyboardInterrupt):
        with undo_folders_on_failure(kept):
            claim_dir(tmp_path / "mine" / "run", "segment-ct train")  # only its record: undone
            claim_dir(tmp_path / "new" / "work", "train geo-seg")
            (tmp_path / "new" / "work" / "state.pt").write_bytes(b"saved")  # finished work: kept
            raise KeyboardInterrupt
    assert kept == [tmp_path / "new" / "work"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "new"] and not any((tmp_path / "mine").iterdir())
    with undo_folders_on_failure():  # success: what it made stays
        claim_dir(tmp_path / "ok" / "run", "x")
    assert read_record(tmp_path / "ok" / "run") is not None


def test_an_out_that_links_to_a_folder_is_written_there_and_the_link_stays(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    for _ in range(2):
        with atomic_dir(tmp_path / "link", "tile") as tmp:
            (tmp / "a.txt").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"]  # no renamed link left behind
    assert (tmp_path / "link").is_symlink() and (tmp_path / "target" / "a.txt").read_text() == "x"


def test_read_yaml_refuses_aliases_and_huge_files(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x]\nb: [*a, *a]\n")
    with pytest.raises(UserError, match="line 2: YAML aliases"):
        read_yaml(bomb)
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * (1 << 20) + "\n")
    with pytest.raises(UserError, match="at most"):
        read_yaml(big)
    (tmp_path / "ok.yaml").write_text("train: {roi: 96}\n")
    assert read_yaml(tmp_path / "ok.yaml") == {"train": {"roi": 96}}


def test_an_os_error_line_names_the_chained_cause():
    try:
        try:
            raise OSError(28, "No space left on device", "/data/pred.tif")
        except OSError as cause:
            raise OSError("Write failed. See previous exception for details.") from cause
    except OSError as exc:
        line = os_error_line(exc)
    assert line.startswith("No space left on device: /data/pred.tif") and "See previous" not in line

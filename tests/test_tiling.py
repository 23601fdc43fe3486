"""The one tiling contract (domainmona.tiling): the K-shot rule, for the sampler and `train dota|star --shots`."""

from collections import Counter

import pytest

from domainmona.detection.fewshot import select_shots as select_patches
from domainmona.errors import UserError
from domainmona.tiling import grid_origins, patch_starts, select_shots

# Units (patches, chips) with their objects per class: "car" fits K = 3 exactly only through 1 + 2;
# "ship" comes 2 at a time (K = 3 needs a top-up to 4); "tank" has 1 object in all.
UNITS = [{"car": 2, "ship": 2}, {"car": 5}, {"car": 1, "tank": 1}, {"ship": 2}, {"car": 2, "ship": 2}, {}]


def test_every_class_gets_exactly_k_when_whole_units_allow_else_the_smallest_top_up():
    selection = select_shots(UNITS, 3, seed=0)
    assert selection.totals == Counter(car=3, ship=4, tank=1)
    assert 1 not in selection.labelled and 5 not in selection.labelled  # 5 cars never fit K = 3; no objects
    for index, classes in selection.labelled.items():  # labelled counts add up to the totals
        assert classes <= set(UNITS[index])
    assert sum((Counter({c: UNITS[i][c] for c in cls}) for i, cls in selection.labelled.items()), Counter()) \
        == selection.totals
    assert select_shots(UNITS, 3, seed=0) == selection  # deterministic for a seed
    assert any(select_shots(UNITS, 3, seed=s).labelled != selection.labelled for s in range(1, 20))
    assert select_shots(UNITS, 3, seed=5).totals == Counter(car=3, ship=4, tank=1)  # counts do not depend on it
    assert select_shots(UNITS, 100, seed=0).totals == Counter(car=10, ship=6, tank=1)  # K beyond the data: all
    with pytest.raises(UserError, match="at least 1"):
        select_shots(UNITS, 0, seed=0)


def _annfile(path, objects):
    path.write_text("".join(f"0 0 4 0 4 4 0 4 {cls} {i % 2}\n" for i, cls in enumerate(objects)))


def test_train_shots_write_patches_labelling_exactly_k_objects_per_class(tmp_path):
    ann = tmp_path / "annfiles"
    ann.mkdir()
    for index, counts in enumerate(UNITS):
        _annfile(ann / f"img__64__{index}___0.txt", [c for c, n in counts.items() for _ in range(n)])
    (subset,), totals = select_patches([(tmp_path / "images", ann)], 3, tmp_path / "shots3", seed=0)
    assert subset == (tmp_path / "images", tmp_path / "shots3" / "subset0" / "annfiles")
    assert totals == Counter(car=3, ship=4, tank=1)
    written = Counter(line.split()[8] for file in subset[1].glob("*.txt") for line in file.read_text().splitlines())
    assert written == totals  # the annfiles hold exactly the chosen objects, the left-out ones removed
    again, _ = select_patches([(tmp_path / "images", ann)], 3, tmp_path / "again", seed=0)
    assert sorted(p.read_text() for p in again[0][1].glob("*.txt")) == \
        sorted(p.read_text() for p in subset[1].glob("*.txt"))


def test_the_grid_ends_flush_with_the_edge_or_keeps_its_stride():
    assert grid_origins(1000, 256, 192) == patch_starts(1000, 256, 64) == [0, 192, 384, 576, 744]
    assert grid_origins(1000, 256, 192, fit_last=False) == [0, 192, 384, 576, 768]
    assert grid_origins(200, 256, 192) == [0]

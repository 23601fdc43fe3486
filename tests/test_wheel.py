"""A plain (non-editable) install finds its configs and recipes: the wheel holds configs/, pipelines/ and the
assets as package data, and an installed copy, imported from outside the source tree, resolves them there.

The wheel is built from a copy of the checkout (the files git tracks or would track), not in place: an
in-place build reuses build/lib, whose stale files could hide a file the wheel no longer picks up.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# source folder -> where its files lie in the wheel
SHIPPED = {"configs": "domainmona/_data/configs", "pipelines": "domainmona/_data/pipelines",
           "domainmona/assets": "domainmona/assets"}

# Run by the installed copy with `python -S` (no site-packages, so no editable finder) and cwd=/tmp.
PROBE = """
import json, sys
from pathlib import Path
from mmengine.config import Config
from domainmona import recipes
from domainmona.detection.config import config_path

micro = Config.fromfile(str(config_path('dota1.0', 'micro')))
dotav2 = Config.fromfile(str(config_path('dota2.0', 'swin-t')))
print(json.dumps({
    'package': recipes.__file__, 'configs': str(recipes.CONFIGS_DIR), 'pipelines': str(recipes.PIPELINES_DIR),
    'recipe': recipes.load_recipe('demo'),
    'micro': {'file': micro.filename, 'embed_dims': micro.model.backbone.embed_dims,
              'backbone': micro.model.backbone.type, 'dataset': micro.train_dataloader.dataset.type,
              'optimizer': micro.optim_wrapper.optimizer.type, 'custom_imports': micro.custom_imports.imports},
    'dotav2': {'file': dotav2.filename, 'dataset': dotav2.train_dataloader.dataset.type,
               'pipeline': [step['type'] for step in dotav2.train_dataloader.dataset.pipeline]},
    'modules': sorted(str(Path(m.__file__).resolve()) for m in list(sys.modules.values())
                      if getattr(m, '__file__', None)),
}))
"""


def _checkout_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    return [name for name in listed.split("\0") if name and (ROOT / name).exists()]


def _copy_checkout(files: list[str], dest: Path) -> None:
    for name in files:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name, follow_symlinks=False)  # keeps domainmona/_data's links


def test_the_wheel_ships_configs_recipes_and_assets_and_an_installed_copy_uses_them(tmp_path):
    files = _checkout_files()
    _copy_checkout(files, tmp_path / "src")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", str(tmp_path / "src"), "-w", str(tmp_path / "dist")],
                   check=True, cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("domainmona-*.whl")

    expected = {f"{SHIPPED[folder]}/{name[len(folder) + 1:]}": ROOT / name
                for name in files for folder in SHIPPED if name.startswith(folder + "/")}
    assert len([n for n in expected if n.startswith("domainmona/_data/configs/")]) >= 20
    assert len([n for n in expected if n.startswith("domainmona/_data/pipelines/")]) >= 5
    assert "domainmona/assets/micro_swin.safetensors" in expected
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name: archive.read(name) for name in archive.namelist() if name in expected}
    assert sorted(set(expected) - set(shipped)) == []
    assert [name for name, source in expected.items() if shipped[name] != source.read_bytes()] == []

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "-q", "--no-deps", "--target", str(site), str(wheel)], check=True)
    deps = [sysconfig.get_paths()[key] for key in ("purelib", "platlib")]
    probe = subprocess.run([sys.executable, "-S", "-c", PROBE], cwd="/tmp", check=True, capture_output=True,
                           text=True, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                                           "PYTHONPATH": ":".join([str(site), *deps])})
    found = json.loads(probe.stdout.splitlines()[-1])

    site = site.resolve()
    for key in ("package", "configs", "pipelines"):
        assert Path(found[key]).resolve().is_relative_to(site), (key, found[key])
    assert found["recipe"] == yaml.safe_load((ROOT / "pipelines" / "demo.yaml").read_text())
    # the micro config's `_base_` chain: micro model -> swin-t model (two levels), dataset, schedule, runtime
    assert Path(found["micro"]["file"]).resolve() == site / SHIPPED["configs"] / "oriented_rcnn" / \
        "oriented-rcnn-le90_mona-swin-micro_fpn_synthetic.py"
    assert found["micro"] == {**found["micro"], "embed_dims": 32, "backbone": "MonaSwinTransformer",
                              "dataset": "DOTADataset", "optimizer": "AdamW",
                              "custom_imports": ["domainmona.detection.backbone"]}
    assert Path(found["dotav2"]["file"]).resolve().is_relative_to(site / SHIPPED["configs"])
    assert found["dotav2"]["dataset"] == "DOTAv2Dataset"  # _base_/datasets/dotav2.py over its own ./dota.py
    assert found["dotav2"]["pipeline"][0] == "mmdet.LoadImageFromFile"
    # nothing came from the source tree (its .venv holds the dependencies)
    venv = Path(sys.prefix).resolve()
    assert [m for m in found["modules"] if Path(m).is_relative_to(ROOT) and not Path(m).is_relative_to(venv)] == []
    assert any(Path(m).is_relative_to(site / "domainmona" / "detection") for m in found["modules"])

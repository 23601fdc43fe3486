"""One typed settings object per pipeline (domainmona.settings): layers, refusals, `--print-config` equal to the
settings a checkpoint records, `--adapter-opt` reaching the adapter method."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from domainmona.cli import run
from domainmona.errors import UserError
from domainmona.settings import (adapter_layer, check_adapter_options, dump_yaml, given, parse_assignments, plain,
                                 read_config, resolve, switch)


@dataclass
class Example:
    name: str
    size: int = 8
    rate: float = 0.5
    flag: bool = False
    path: Path | None = None
    names: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.size < 1:
            raise UserError(f"size must be at least 1, got {self.size}")


# --- the machinery ---------------------------------------------------------------------------------------

def test_layers_apply_in_order_and_values_take_their_field_types():
    settings = resolve(Example, ("defaults", {"name": "a", "size": 2}), ("config", {"size": 3, "rate": 1,
                       "path": "x/y", "names": ["p", "q"]}), ("flags", {"flag": True}))
    assert settings == Example("a", 3, 1.0, True, Path("x/y"), ("p", "q"))
    assert isinstance(settings.rate, float)
    assert resolve(Example, ("c", {"name": "a", "rate": "1e-4"})).rate == 1e-4  # YAML 1.1 leaves 1e-4 a string


@pytest.mark.parametrize("layer, message", [
    ({"name": "a", "nope": 1}, "config: unknown setting(s) nope (known: name, size"),
    ({"name": "a", "size": "8"}, "config: size must be a whole number, got '8'"),
    ({"name": "a", "size": True}, "size must be a whole number, got True"),
    ({"name": "a", "flag": "yes"}, "flag must be true or false, got 'yes'"),
    ({"name": "a", "rate": float("nan")}, "must be a finite number"),
    ({"name": "a", "names": "p"}, "must be a list"),
    ({"name": "a", "extra": [1]}, "must be a mapping"),
    ({"name": "a", "size": 0}, "size must be at least 1"),  # the dataclass's own check
    ({"size": 3}, "settings: missing name"),
])
def test_bad_layers_are_refused_in_one_line(layer, message):
    with pytest.raises(UserError) as info:
        resolve(Example, ("config", layer))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_aliases_rename_old_keys():
    assert resolve(Example, ("c", {"title": "a"}), aliases={"title": "name"}).name == "a"


def test_key_value_options():
    assert parse_assignments(["inner_dim=32", "dropout=0.1", "on=true", "name=x=y"]) == \
        {"inner_dim": 32, "dropout": 0.1, "on": True, "name": "x=y"}
    for bad in ("inner_dim", "=3"):
        with pytest.raises(UserError, match="expected KEY=VALUE"):
            parse_assignments([bad])
    assert adapter_layer({"adapter_cfg": {"inner_dim": 8, "dropout": 0.2}}, ["inner_dim=32"]) == \
        {"adapter_cfg": {"inner_dim": 32, "dropout": 0.2}}
    assert adapter_layer({"adapter_cfg": {"inner_dim": 8}}, None) == {}


def test_adapter_options_are_checked_against_the_method_config():
    check_adapter_options("mona", {"inner_dim": 32})
    with pytest.raises(UserError, match="method 'mona' has no option 'nope'"):
        check_adapter_options("mona", {"nope": 1})
    with pytest.raises(UserError, match="no adapter method"):
        check_adapter_options("none", {"inner_dim": 8})


def test_plain_data_and_yaml():
    settings = Example("a", path=Path("p"), names=("x",), extra={"k": (1, 2)})
    assert plain(settings) == {"name": "a", "size": 8, "rate": 0.5, "flag": False, "path": "p", "names": ["x"],
                               "extra": {"k": [1, 2]}}
    assert yaml.safe_load(dump_yaml(settings)) == plain(settings)
    assert given(a=None, b=0) == {"b": 0} and switch(True, True) is None and switch(False, True) is False


def test_read_config(tmp_path):
    assert read_config(None) == {}
    (tmp_path / "empty.yaml").write_text("")
    assert read_config(tmp_path / "empty.yaml") == {}
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(UserError, match="must be a YAML mapping"):
        read_config(tmp_path / "list.yaml")


# --- every train command ---------------------------------------------------------------------------------

COMMANDS = {  # argv of each train command, inputs that need not exist for --print-config
    "dota": ["train", "dota", "--data", "{ws}/data", "--work-dir", "{ws}/run", "-b", "micro"],
    "star": ["train", "star", "--data", "{ws}/data", "--work-dir", "{ws}/run", "-b", "micro"],
    "geo-det": ["train", "geo-det", "--chips", "{ws}/chips", "--work-dir", "{ws}/run", "-b", "micro"],
    "geo-seg": ["train", "geo-seg", "--chips", "{ws}/chips", "--work-dir", "{ws}/run", "--encoder", "micro"],
    "segment-ct": ["segment-ct", "train", "--data", "{ws}/data", "--work-dir", "{ws}/run"],
}


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _invoke(argv, tmp_path):
    """`domainmona ARGV` in this process, as the console script runs it (UserError: one line, exit 2)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run([a.replace("{ws}", str(tmp_path)) for a in argv])
    return Result(code, out.getvalue(), err.getvalue())


def _adapter_cfg(printed: dict) -> dict:
    return printed["model"]["adapter_cfg"] if "model" in printed else printed["adapter_cfg"]


@pytest.mark.parametrize("command", COMMANDS)
def test_print_config_layers_config_and_adapter_opt_and_writes_nothing(command, tmp_path):
    config = tmp_path / "settings.yaml"
    cfg = {"adapter_cfg": {"inner_dim": 8, "dropout": 0.2}}
    config.write_text(yaml.safe_dump({"model": cfg} if command == "segment-ct" else cfg))
    result = _invoke([*COMMANDS[command], "--config", str(config), "--adapter-opt", "inner_dim=32",
                      "--print-config"], tmp_path)
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    assert _adapter_cfg(printed) == {"inner_dim": 32, "dropout": 0.2}  # the flag over --config, key by key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.yaml"]  # nothing written


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("how", ["config", "adapter-opt"])
def test_unknown_keys_are_refused_in_one_line(command, how, tmp_path):
    config = tmp_path / "settings.yaml"
    config.write_text("nope: 1\n")
    extra = ["--config", str(config)] if how == "config" else ["--adapter-opt", "nope=1"]
    result = _invoke([*COMMANDS[command], *extra, "--print-config"], tmp_path)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert not result.stdout and len(lines) == 1 and lines[0].startswith("error: ") and "nope" in lines[0]


def test_flags_win_over_config_which_wins_over_defaults(tmp_path):
    config = tmp_path / "settings.yaml"
    config.write_text("max_iters: 7\nlr: 0.001\nencoder: swin-t\namp: false\n")  # `encoder`: the old key
    result = _invoke([*COMMANDS["geo-seg"], "--config", str(config), "--lr", "0.01", "--print-config"], tmp_path)
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    assert (printed["max_iters"], printed["lr"], printed["backbone"], printed["amp"]) == (7, 0.01, "micro", False)
    assert printed["batch_size"] == 4  # configs/geo/geo-seg.yaml


@pytest.mark.parametrize("command", COMMANDS)
def test_explicit_switches_override_the_config_either_way(command, tmp_path):
    """`--amp` over `amp: false` in --config, `--no-adapter-recompute` over `adapter_recompute: true`: a switch
    given on the command line wins whichever way it points; left out, the config's value stands."""
    def printed(config, *flags):
        path = tmp_path / "settings.yaml"
        path.write_text(yaml.safe_dump({"train": config} if command == "segment-ct" else config))
        result = _invoke([*COMMANDS[command], "--config", str(path), *flags, "--print-config"], tmp_path)
        assert result.exit_code == 0, result.output
        values = yaml.safe_load(result.stdout)
        values = values["train"] if command == "segment-ct" else values
        return values["amp"], values["adapter_recompute"]

    assert printed({"amp": False, "adapter_recompute": True}, "--amp", "--no-adapter-recompute") == (True, False)
    assert printed({"amp": False, "adapter_recompute": False}) == (False, False)
    assert printed({"amp": True, "adapter_recompute": False}, "--no-amp", "--adapter-recompute") == (False, True)


@pytest.mark.parametrize("command", ["dota", "geo-det", "geo-seg"])
def test_a_side_network_freezes_the_vit_unless_a_method_is_named(command, tmp_path):
    """`--side hst` (or `side: vit-comer` in --config) without `--adapter`: the frozen-ViT method; with
    `--adapter mona` (or `adapter: lora` in --config) that method; `--side-opt` over the config's side_cfg."""
    argv = [a if a != "micro" else "vit-s-16" for a in COMMANDS[command]]
    config = tmp_path / "settings.yaml"

    def printed(cfg, *flags):
        config.write_text(yaml.safe_dump(cfg))
        result = _invoke([*argv, "--config", str(config), *flags, "--print-config"], tmp_path)
        assert result.exit_code == 0, result.output
        values = yaml.safe_load(result.stdout)
        return values["side"], values["adapter"], values["side_cfg"]

    assert printed({}, "--side", "hst") == ("hst", "fixed", {})
    assert printed({"side": "vit-comer"}) == ("vit-comer", "fixed", {})
    assert printed({}, "--side", "hst", "--adapter", "mona") == ("hst", "mona", {})
    assert printed({"adapter": "lora", "side_cfg": {"preset": "cls", "n_meta": 2}}, "--side", "hst",
                   "--side-opt", "preset=dense-m") == ("hst", "lora", {"preset": "dense-m", "n_meta": 2})
    assert printed({}) == ("simple", "mona", {})


def test_patch_grid_comes_from_the_recipe(tmp_path):
    from domainmona.recipes import load_recipe

    result = _invoke([*COMMANDS["star"], "--print-config"], tmp_path)
    printed = yaml.safe_load(result.stdout)
    split = load_recipe("star")["split"]
    assert (printed["patch_size"], printed["patch_gap"]) == (split["size"], split["gap"])


def test_adapter_opt_reaches_mona_in_every_pipeline(tmp_path):
    """detection: TrainOptions.adapter_cfg into the mmengine config; geo-seg: the model spec; CT: model.adapter_cfg."""
    from domainmona.adapters.methods import get_method

    for command in COMMANDS:
        result = _invoke([*COMMANDS[command], "--adapter-opt", "inner_dim=32", "--print-config"], tmp_path)
        config = get_method("mona").make_config(**_adapter_cfg(yaml.safe_load(result.stdout)))
        assert config.inner_dim == 32, command


def test_detector_checkpoint_metadata_keeps_the_settings():
    from domainmona.detection.checkpoint import DetectorInfo

    settings = {"backbone": "micro", "adapter_cfg": {"inner_dim": 32}, "classes": None}
    info = DetectorInfo("cfg", ("a",), 64, 16, settings=settings)
    assert DetectorInfo.from_metadata(info.metadata(), Path("x")).settings == settings
    old = DetectorInfo("cfg", ("a",), 64, 16).metadata()
    assert "settings" not in old and DetectorInfo.from_metadata(old, Path("x")).settings is None


def test_geo_seg_print_config_equals_the_checkpoint_settings_end_to_end(tmp_path):
    """Tile generated scenes, train geo-seg two iterations with the micro encoder and Mona's inner_dim 16."""
    from domainmona.geo.segmodel import read_metadata
    from domainmona.geo.synthetic import SceneSpec, write_scene

    scene = write_scene(tmp_path / "scene.tif", tmp_path / "labels.gpkg",
                        SceneSpec(width=512, height=448, bands=4, dtype="uint16", kind="areas", objects=5, seed=4))
    result = _invoke(["tile", str(scene.raster), "--labels", str(scene.labels), "--out", "{ws}/chips", "--size",
                      "224", "--overlap", "0", "--task", "segmentation"], tmp_path)
    assert result.exit_code == 0, result.output
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({"max_iters": 2, "batch_size": 1, "arch": "FPN", "amp": False}))
    argv = [*COMMANDS["geo-seg"], "--config", str(config), "--adapter-opt", "inner_dim=16", "--seed", "3"]
    printed = _invoke([*argv, "--print-config"], tmp_path)
    assert printed.exit_code == 0, printed.output
    trained = _invoke(argv, tmp_path)
    assert trained.exit_code == 0, trained.output
    checkpoint = Path(trained.stdout.strip().splitlines()[-1])
    stored = json.loads(read_metadata(checkpoint)["settings"])
    assert stored == yaml.safe_load(printed.stdout)
    spec = json.loads(read_metadata(checkpoint)["spec"])
    assert spec["adapter_cfg"] == {"inner_dim": 16}  # it reached the model


def test_segment_ct_print_config_equals_the_checkpoint_settings_end_to_end(tmp_path):
    import torch

    from domainmona.medical import synthetic

    data = synthetic.write_dataset(tmp_path / "task", cases=3, shape=(40, 40, 20), seed=3)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"feature_size": 12}, "augment": {"samples_per_volume": 1},
        "train": {"roi": 64, "max_epochs": 1, "val_every": 1, "num_workers": 0, "sw_batch_size": 1, "val_max": 1}}))
    argv = ["segment-ct", "train", "--data", str(data), "--work-dir", "{ws}/run", "--shots", "2", "--config",
            str(config), "--gpus", "0", "--adapter-opt", "inner_dim=8"]
    printed = _invoke([*argv, "--print-config"], tmp_path)
    assert printed.exit_code == 0, printed.output
    assert not (tmp_path / "run").exists()
    trained = _invoke(argv, tmp_path)
    assert trained.exit_code == 0, trained.output
    stored = torch.load(Path(trained.stdout.strip().splitlines()[-1]), weights_only=True)["settings"]
    assert stored == yaml.safe_load(printed.stdout)
    assert stored["model"]["adapter_cfg"] == {"inner_dim": 8}


def test_train_dota_print_config_equals_the_checkpoint_settings_end_to_end(tmp_path):
    """Generated scenes, the micro Swin, one iteration; the classes come from --config."""
    from domainmona.adapters.checkpoint import read_adapter
    from domainmona.detection.checkpoint import DetectorInfo
    from domainmona.detection.synthetic import SYNTHETIC_CLASSES, generate_dota_scenes

    generate_dota_scenes(tmp_path / "train", 2, 256, seed=0, objects_per_image=(4, 6))
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({"classes": list(SYNTHETIC_CLASSES), "batch_size": 1, "num_workers": 0,
                                      "lr": 1e-3, "amp": False}))
    argv = ["train", "dota", "--data", "{ws}/train", "--work-dir", "{ws}/work", "-b", "micro", "--max-iters", "1",
            "--patch-size", "256", "--patch-gap", "64", "--config", str(config), "--adapter-opt", "inner_dim=16"]
    printed = _invoke([*argv, "--print-config"], tmp_path)
    assert printed.exit_code == 0, printed.output
    assert not (tmp_path / "work").exists()
    trained = _invoke(argv, tmp_path)
    assert trained.exit_code == 0, trained.output
    final = Path(trained.stdout.strip().splitlines()[-1])
    info = DetectorInfo.from_metadata(read_adapter(final)[1], final)
    assert info.settings == yaml.safe_load(printed.stdout)
    assert info.settings["adapter_cfg"] == {"inner_dim": 16} and info.classes == SYNTHETIC_CLASSES

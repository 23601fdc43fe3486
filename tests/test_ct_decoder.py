"""segment-ct over whole pretrained networks: whole-network files in, `--decoder train|adapt|frozen`, adapter files
holding exactly what trains, and the flow through the command line (tiny SwinUNETR, UNETR and SegResNet)."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from domainmona.adapters import load_adapter
from domainmona.adapters.backbones import get_backbone
from domainmona.adapters.checkpoint import read_adapter
from domainmona.errors import UserError
from domainmona.medical import synthetic
from domainmona.medical.data import load_split
from domainmona.medical.model import assemble, build_network, encoder_modules, head_of
from domainmona.medical.settings import decoder_mode, load_settings
from domainmona.medical.weights import load_network_weights, save_adapter_file

NETWORKS = ("swinunetr", "unetr", "segresnet")
ROI = {"swinunetr": 64, "unetr": 32, "segresnet": 32}
TINY = {"model": {"feature_size": 12, "adapter_cfg": {"inner_dim": 8},
                  "unetr": {"feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4},
                  "segresnet": {"init_filters": 8, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1]}},
        "augment": {"samples_per_volume": 1},
        "train": {"roi": 64, "max_epochs": 1, "val_every": 1, "num_workers": 0, "sw_batch_size": 1, "val_max": 1}}
# Small options of each method at the tiny widths (Conv-Adapter's reduction must divide SwinUNETR-12's 12 channels).
OPTIONS = {"mona": {"inner_dim": 8}, "lora": {"rank": 4}, "conv-adapter": {"reduction": 4}}
# What each method adds, by name: Mona's slots, LoRA's factors, Conv-Adapter's modules.
MARKS = {"mona": (".post_attn.", ".post_mlp.", ".post_block."), "lora": (".lora_",),
         "conv-adapter": (".attn_parallel.", ".conv_adapter.")}
# The blocks of each decoder that take adapters (SwinUNETR's and UNETR's stages, SegResNet's up path).
SITES = {
    "swinunetr": {f"encoder{i}.layer" for i in (1, 2, 3, 4, 10)} | {f"decoder{i}.conv_block" for i in range(1, 6)},
    "unetr": {"encoder1.layer", "encoder2.blocks.0.1", "encoder2.blocks.1.1", "encoder3.blocks.0.1"}
    | {f"decoder{i}.conv_block" for i in range(2, 6)},
    "segresnet": {"up_layers.0.0", "up_layers.1.0", "up_layers.2.0"},
}


def settings_for(name: str, method: str = "mona", decoder: str | None = None) -> dict:
    overrides = json.loads(json.dumps(TINY))
    overrides["model"].update(name=name, adapter=method, decoder=decoder, adapter_cfg=OPTIONS.get(method, {}))
    overrides["train"]["roi"] = ROI[name]
    return load_settings(None, **overrides)


def source_network(name: str, classes: int = 4, seed: int = 5) -> torch.nn.Module:
    """The plain network a user would have trained (or downloaded), with its own weights."""
    torch.manual_seed(seed)
    return build_network(settings_for(name)["model"], classes, roi=ROI[name])


def save_whole(network: torch.nn.Module, path: Path, form: str = "state_dict+module") -> Path:
    """`network` as MONAI bundles and plain torch.save write it."""
    state = network.state_dict()
    wrapped = {"plain": state, "state_dict": {"state_dict": state, "epoch": 7}, "model": {"model": state},
               "module": {f"module.{k}": v for k, v in state.items()},
               "state_dict+module": {"state_dict": {f"module.{k}": v for k, v in state.items()}}}[form]
    torch.save(wrapped, path)
    return path


def build(name: str, method: str = "mona", decoder: str | None = None, pretrained: Path | None = None,
          verbose: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    return assemble(settings_for(name, method, decoder)["model"], 4, pretrained=pretrained, roi=ROI[name],
                    verbose=verbose)


def trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic.write_dataset(tmp_path_factory.mktemp("ct") / "task", cases=3, shape=(40, 40, 20), seed=3)


def _cli(argv: list[str]) -> int:
    from domainmona.cli import run

    return run([str(a) for a in argv])


# --- whole-network weights in ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("form", ["plain", "state_dict", "model", "module", "state_dict+module"])
def test_a_whole_network_file_loads_encoder_decoder_and_head_with_counts(name, form, tmp_path, capsys):
    source = source_network(name)
    path = save_whole(source, tmp_path / "model.pt", form)
    model = build_network(settings_for(name)["model"], 4, roi=ROI[name])
    expected = source.state_dict()
    assert load_network_weights(model, name, path) == len(expected)
    assert (f"(monai-{name} layout): loaded {len(expected)} tensors, 0 missing, 0 unexpected, 0 re-initialised"
            in capsys.readouterr().out)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name", NETWORKS)
def test_a_head_for_another_class_count_is_reinitialised_and_reported_on_one_line(name, tmp_path, capsys):
    source = source_network(name, classes=14)  # e.g. BTCV's 13 organs and background
    path = save_whole(source, tmp_path / "model.pt")
    model = build(name, pretrained=path, verbose=True)  # 4 classes; the decoder adapted by default
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("pretrained:")]
    whole = len(source.state_dict())
    assert len(printed) == 1 and printed[0].endswith(
        f"(monai-{name} layout): loaded {whole - 2} tensors, 0 missing, 0 unexpected, 2 re-initialised "
        "(output head: 14 classes in the file, 4 here)")
    head = head_of(model)
    state = model.state_dict()
    reinitialised = sorted(k for k in source.state_dict() if k.startswith(f"{head}.") and
                           source.state_dict()[k].shape != state[k].shape)
    assert len(reinitialised) == 2 and all(state[k].shape[0] == 4 for k in reinitialised)
    assert {n for n in trainable(model) if n.startswith(f"{head}.")} >= set(reinitialised)  # the new head trains
    module = encoder_modules(name)[0]
    for key, value in source.state_dict().items():  # the rest, encoder and decoder, is the source's
        if key not in reinitialised:
            torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    assert any(key.startswith(f"{module}.") for key in source.state_dict())


@pytest.mark.parametrize(("name", "other"), [("swinunetr", "segresnet"), ("unetr", "swinunetr"),
                                             ("segresnet", "unetr")])
def test_another_networks_file_is_refused_in_one_line_and_nothing_is_written(name, other, dataset, tmp_path, capsys):
    path = save_whole(source_network(other), tmp_path / "other.pt")
    work = tmp_path / "run"
    code = _cli(["segment-ct", "train", "--data", dataset, "--work-dir", work, "--model", name, "--pretrained", path,
                 "--roi", ROI[name], "--gpus", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    theirs = get_backbone(other).options["monai_class"]
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: ") and f"a whole {theirs}" in err[0] and f"--model {other}" in err[0]
    assert not work.exists()
    with pytest.raises(UserError, match=f"a whole {theirs}"):  # the library refuses it too
        load_network_weights(build_network(settings_for(name)["model"], 4, roi=ROI[name]), name, path)


def test_encoder_only_files_keep_loading_into_the_encoder_with_the_decoder_training(tmp_path):
    """A SwinUNETR's Swin in model_swinvit.pt's layout: the encoder loads, the decoder trains (default train)."""
    source = source_network("swinunetr")
    state = {"module." + k.removeprefix("swinViT.").replace(".mlp.linear1.", ".mlp.fc1.")
             .replace(".mlp.linear2.", ".mlp.fc2."): v for k, v in source.state_dict().items()
             if k.startswith("swinViT.")}
    torch.save({"state_dict": state}, tmp_path / "model_swinvit.pt")
    model = build("swinunetr", pretrained=tmp_path / "model_swinvit.pt")
    assert decoder_mode(settings_for("swinunetr")["model"], tmp_path / "model_swinvit.pt") == "train"
    torch.testing.assert_close(model.swinViT.layers2[0].blocks[1].attn.qkv.weight,
                               source.swinViT.layers2[0].blocks[1].attn.qkv.weight)
    assert {n for n in trainable(model) if not n.startswith("swinViT.")} == \
        {n for n, _ in model.named_parameters() if not n.startswith("swinViT.")}


# --- --decoder ---------------------------------------------------------------------------------------------------

def test_decoder_default_is_adapt_over_whole_weights_train_otherwise_and_an_explicit_value_wins(tmp_path):
    whole = save_whole(source_network("unetr"), tmp_path / "model.pt")
    vit = tmp_path / "vit.pt"
    torch.save(source_network("unetr").vit.state_dict(), vit)
    model = settings_for("unetr")["model"]
    assert model["decoder"] is None  # the settings' default: resolved from the weights
    assert decoder_mode(model, whole) == "adapt"
    assert decoder_mode(model, vit) == decoder_mode(model, None) == "train"
    for explicit in ("train", "adapt", "frozen"):
        assert decoder_mode(settings_for("unetr", decoder=explicit)["model"], whole) == explicit
        assert decoder_mode(settings_for("unetr", decoder=explicit)["model"], None) == explicit
    assert decoder_mode(settings_for("unetr", "none")["model"], whole) == "train"  # a plain network trains whole


def test_print_config_shows_the_resolved_decoder(dataset, tmp_path, capsys):
    whole = save_whole(source_network("segresnet"), tmp_path / "model.pt")
    base = ["segment-ct", "train", "--data", dataset, "--work-dir", tmp_path / "run", "--model", "segresnet",
            "--roi", 32, "--print-config"]
    for extra, expected in (([], "train"), (["--pretrained", whole], "adapt"),
                            (["--pretrained", whole, "--decoder", "frozen"], "frozen")):
        assert _cli(base + extra) == 0
        assert yaml.safe_load(capsys.readouterr().out)["model"]["decoder"] == expected
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_from_before_the_decoder_setting_rebuilds_its_trained_decoder(tmp_path):
    from domainmona.medical.checkpoint import load_checkpoint, save_checkpoint

    settings = settings_for("segresnet")
    del settings["model"]["decoder"]
    save_checkpoint(tmp_path / "old.pt", model={}, settings=settings, num_classes=4, label_names={"1": "liver"})
    assert load_checkpoint(tmp_path / "old.pt")["settings"]["model"]["decoder"] == "train"


@pytest.mark.parametrize("name", NETWORKS)
@pytest.mark.parametrize("method", ["mona", "lora", "conv-adapter"])
def test_what_trains_in_each_decoder_mode(name, method):
    """adapt: the encoder's and the decoder's adapters and the output head; frozen: the encoder's adapters and the
    head; train: the encoder's adapters and the whole decoder."""
    encoder, stems = encoder_modules(name)
    inside = tuple(f"{m}." for m in (encoder, *stems))
    for mode in ("adapt", "frozen", "train"):
        model = build(name, method, mode)
        head = f"{head_of(model)}."
        names = {n for n, _ in model.named_parameters()}
        adapters = {n for n in names if any(mark in n for mark in MARKS[method])}
        encoder_adapters = {n for n in adapters if n.startswith(inside)}
        decoder = {n for n in names if not n.startswith(inside)}
        expected = {"adapt": adapters | {n for n in names if n.startswith(head)},
                    "frozen": encoder_adapters | {n for n in names if n.startswith(head)},
                    "train": encoder_adapters | decoder}[mode]
        assert encoder_adapters and trainable(model) == expected, mode
        in_decoder = adapters - encoder_adapters
        if mode != "adapt":
            assert not in_decoder, mode
        elif method == "mona":  # one after each block
            assert {n.split(".post_block.")[0] for n in in_decoder} == SITES[name]
        else:  # LoRA on both 3D convolutions of each block, Conv-Adapter beside the last
            wanted = ("conv1.conv", "conv2.conv") if method == "lora" else ("conv2.conv",)
            convs = {n.rsplit(".", 1)[0] if method == "lora" else n.split(".conv_adapter.")[0] for n in in_decoder}
            assert convs == {f"{site}.{conv}" for site in SITES[name] for conv in wanted}


@pytest.mark.parametrize("name", NETWORKS)
def test_lora_on_the_decoder_convolutions_folds_into_them_exactly(name):
    """predict merges the adapters: LoRA's low-rank kernels fold into the decoder's 3D convolutions (and the
    encoder's q and v), leaving plain networks with the same outputs."""
    from domainmona.adapters import adapted_backbones, merge

    model = build(name, "lora", "adapt").eval()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        x = torch.randn(1, 1, *(ROI[name],) * 3, generator=generator)
        plain = model(x)  # the up factors start at zero
        for param_name, param in model.named_parameters():
            if param_name.endswith("_up"):  # away from zero, so that the updates matter
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
        before = model(x)
        after = merge(model)(x)
    assert not torch.allclose(before, plain, atol=1e-3)
    assert not adapted_backbones(model) and not any("lora_" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"adapter": "bitfit", "decoder": "adapt"},
     "--decoder adapt: --adapter bitfit is not defined for the decoder's conv blocks (choose from mona, lora, "
     "conv-adapter, full, fixed), or pass --decoder train or frozen"),
    ({"adapter": "none", "decoder": "frozen"},
     "--decoder frozen: needs an --adapter method (--adapter none trains the whole network)"),
    ({"decoder": "partial"}, "--decoder partial: choose from train, adapt, frozen"),
])
def test_an_undefined_decoder_method_or_mode_is_refused_in_one_line(overrides, message):
    with pytest.raises(UserError) as refused:
        load_settings(None, model=overrides)
    assert str(refused.value) == message


def test_the_default_adapt_refuses_a_method_the_decoder_does_not_define(tmp_path):
    whole = save_whole(source_network("unetr"), tmp_path / "model.pt")
    with pytest.raises(UserError, match=r"^--decoder adapt \(the default over whole-network weights\): --adapter "
                                        r"ssf is not defined") as refused:
        decoder_mode(settings_for("unetr", "ssf")["model"], whole)
    assert "\n" not in str(refused.value)
    assert decoder_mode(settings_for("unetr", "ssf", "frozen")["model"], whole) == "frozen"


# --- adapter files -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "method", "decoder"), [
    ("swinunetr", "mona", None), ("unetr", "lora", None), ("segresnet", "mona", None), ("unetr", "conv-adapter", "frozen"),
    ("segresnet", "lora", None), ("segresnet", "conv-adapter", None),
])
def test_the_adapter_file_holds_exactly_what_trains_and_round_trips(name, method, decoder, tmp_path):
    whole = save_whole(source_network(name, classes=6), tmp_path / "model.pt")
    settings = settings_for(name, method, decoder)
    settings["model"]["decoder"] = decoder_mode(settings["model"], whole)  # as train records it
    trained = build(name, method, settings["model"]["decoder"], pretrained=whole)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # as after training: every trainable tensor moved
        for param in trained.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    torch.save({"model": trained.state_dict()}, tmp_path / "best.pt")
    path = save_adapter_file(trained, settings["model"], tmp_path / "adapter.safetensors", tmp_path / "best.pt")
    tensors, meta = read_adapter(path)
    assert set(tensors) == trainable(trained)
    parts = [p["prefix"] for p in json.loads(meta["parts"])] if decoder is None else [meta["prefix"]]
    assert parts[0] == encoder_modules(name)[0] and len(parts) == (1 if decoder else 1 + len(
        {s.split(".")[0] for s in SITES[name]}))
    fresh = build(name, method, settings["model"]["decoder"], pretrained=whole)  # from the recorded settings
    load_adapter(fresh, path)
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0, msg=key)
    other = save_whole(source_network(name, classes=6, seed=9), tmp_path / "other.pt")
    with pytest.raises(UserError, match="trained on other base weights at '"
                       if decoder is None else "trained on other base weights"):
        load_adapter(build(name, method, settings["model"]["decoder"], pretrained=other), path)


# --- the command line, end to end --------------------------------------------------------------------------------

def test_train_over_a_whole_swinunetr_with_mona_then_predict_and_evaluate(dataset, tmp_path, capsys):
    """`segment-ct train --pretrained <whole SwinUNETR> --adapter mona`: the decoder adapted by default, the head
    for 14 classes re-initialised for the data's 4, the adapter file's size printed and at most 5% of best.pt;
    then predict and evaluate."""
    whole = save_whole(source_network("swinunetr", classes=14), tmp_path / "swinunetr_btcv.pt")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    work = tmp_path / "run"
    assert _cli(["segment-ct", "train", "--data", dataset, "--work-dir", work, "--shots", "1", "--config", config,
                 "--pretrained", whole, "--adapter", "mona", "--gpus", "0"]) == 0
    out = capsys.readouterr().out
    best = work / "checkpoints" / "best.pt"
    assert out.strip().splitlines()[-1] == str(best)
    assert "0 missing, 0 unexpected, 2 re-initialised (output head: 14 classes in the file, 4 here)" in out
    sizes = [line for line in out.splitlines() if line.startswith("adapter file best_adapter.safetensors: ")]
    assert sizes and "% of best.pt" in sizes[0]
    adapter = work / "checkpoints" / "best_adapter.safetensors"
    assert adapter.stat().st_size <= 0.05 * best.stat().st_size
    checkpoint = torch.load(best, weights_only=True)
    assert checkpoint["settings"]["model"]["decoder"] == "adapt"
    fresh = assemble(checkpoint["settings"]["model"], checkpoint["num_classes"], pretrained=whole, roi=64)
    load_adapter(fresh, adapter)  # a fresh model from the checkpoint's settings is the trained one
    for key, value in checkpoint["model"].items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0, msg=key)

    image = load_split(dataset, shots=1).val[0]["image"]
    assert _cli(["segment-ct", "predict", image, "--checkpoint", best, "--out", tmp_path / "pred"]) == 0
    assert Path(capsys.readouterr().out.strip().splitlines()[-1]).exists()
    assert _cli(["segment-ct", "evaluate", "--pred", tmp_path / "pred", "--gt", dataset / "labelsTr", "--json",
                 tmp_path / "scores.json"]) == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert list(scores["classes"]) == ["liver", "spleen", "kidney"]
    assert all(0.0 <= c["dice"] <= 1.0 for c in scores["classes"].values())


def test_resume_keeps_the_decoder_mode_the_run_started_with_without_repeating_pretrained(dataset, tmp_path, capsys):
    """The default decoder mode is resolved from --pretrained when the run starts; `--resume` reads it from
    last.pt, so a killed run is resumed by the same command with or without --pretrained."""
    whole = save_whole(source_network("segresnet"), tmp_path / "model.pt")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "model": {**TINY["model"], "adapter_cfg": {"rank": 4}},
                                      "train": {**TINY["train"], "roi": ROI["segresnet"]}}))
    base = ["segment-ct", "train", "--data", dataset, "--work-dir", tmp_path / "run", "--shots", "1", "--config",
            config, "--model", "segresnet", "--adapter", "lora", "--gpus", "0"]
    assert _cli(base + ["--pretrained", whole]) == 0
    assert _cli(base + ["--resume", "--max-epochs", "2"]) == 0
    assert "resuming" in capsys.readouterr().out
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["settings"]["model"]["decoder"] == "adapt"
    assert any(".lora_" in key and key.startswith("up_layers.") for key in last["model"])

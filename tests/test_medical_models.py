"""segment-ct's UNETR (MONAI 3D ViT) and SegResNet (MONAI 3D CNN): adapter placement, counts, weights, the CLI."""

import copy
import json
import math
from pathlib import Path

import nibabel as nib
import pytest
import torch
import yaml
from monai.networks.nets import UNETR, ViT

from domainmona.adapters import adapted_backbones, inject, load_adapter, save_adapter
from domainmona.adapters.modules.mona import Mona3d
from domainmona.errors import UserError
from domainmona.medical import synthetic
from domainmona.medical.data import load_split
from domainmona.medical.model import assemble, encoder, encoder_modules
from domainmona.medical.settings import load_settings
from domainmona.medical.summary import parameter_counts
from domainmona.medical.weights import load_network_weights

UNETR_TINY = {"feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}
SEGRESNET_TINY = {"init_filters": 8, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1]}
TINY = {"model": {"adapter_cfg": {"inner_dim": 8}, "unetr": UNETR_TINY, "segresnet": SEGRESNET_TINY},
        "augment": {"samples_per_volume": 1},
        "train": {"roi": 32, "max_epochs": 1, "val_every": 1, "num_workers": 0, "sw_batch_size": 1, "val_max": 1}}


def settings_for(name: str, adapter: str = "mona") -> dict:
    overrides = json.loads(json.dumps(TINY))
    overrides["model"].update(name=name, adapter=adapter)
    if adapter != "mona":
        overrides["model"]["adapter_cfg"] = {}
    return load_settings(None, **overrides)


def build(name: str, adapter: str = "mona", seed: int = 0, classes: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    return assemble(settings_for(name, adapter)["model"], classes, roi=32).eval()


def mona_size(dim: int, inner: int) -> int:
    """Mona's parameters: LN (2C), gamma and gammax (2C), project1, the 3/5/7 depthwise convs, the 1x1
    projector and project2, with biases."""
    convs = sum(inner * (k ** 3 + 1) for k in (3, 5, 7)) + inner * inner + inner
    return 4 * dim + dim * inner + inner + convs + inner * dim + dim


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic.write_dataset(tmp_path_factory.mktemp("ct") / "task", cases=3, shape=(40, 40, 20), seed=3)


# --- adapters in the encoders --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["unetr", "segresnet"])
def test_mona_adds_nothing_until_trained_and_the_encoder_sees_it(name):
    """With project2 at zero (what the adapter adds), the Mona model is the plain network exactly: the joins keep
    every residual path. Mona's official init is near-identity, not identity (project2 ~ N(0, 0.02)), so the
    fresh model differs, and only through the encoder's adapters."""
    plain, mona = build(name, "none"), build(name)
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = plain(x)
        assert not torch.allclose(mona(x), reference, atol=1e-4)
        for module in mona.modules():
            if isinstance(module, Mona3d):
                module.project2.weight.zero_()
        torch.testing.assert_close(mona(x), reference, rtol=0, atol=0)


def test_unetr_monas_sit_after_both_residuals_on_the_d16_h16_w16_grid():
    """One MONAI ViT block by hand on a 32x48x64 input: the (2, 3, 4) token grid in D, H, W order, Mona 1 after
    the attention residual, Mona 2 after the MLP residual, no CLS token."""
    torch.manual_seed(0)
    vit = ViT(1, img_size=(32, 48, 64), patch_size=16, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4)
    inject(vit, "mona", inner_dim=8).eval()
    with torch.no_grad():
        for name, param in vit.named_parameters():
            if "gamma" in name:  # away from the near-identity init
                param.normal_(0.0, 0.5)
    x = torch.randn(1, 1, 32, 48, 64)
    block = vit.blocks[0]
    with torch.no_grad():
        tokens = vit.patch_embedding(x)
        expected = block.post_attn.reference_forward(tokens + block.attn(block.norm1(tokens)), (2, 3, 4))
        expected = block.post_mlp.reference_forward(expected + block.mlp(block.norm2(expected)), (2, 3, 4))
        _, hidden = vit(x)
    torch.testing.assert_close(hidden[0], expected, rtol=1e-4, atol=1e-5)


def test_segresnet_monas_follow_each_down_block_only():
    model = build("segresnet")
    (_, root, state), = adapted_backbones(model)
    assert root is model.down_layers and state.family == "monai-segresnet"
    hosts = sorted({n.rsplit(".post_block.", 1)[0] for n in state.parameters})
    # Each level is (downsampling conv or Identity, ResBlock, ...): blocks_down (1, 2, 2, 4).
    assert hosts == ["0.1", "1.1", "1.2", "2.1", "2.2", "3.1", "3.2", "3.3", "3.4"]
    assert not any(".post_block." in n for n, _ in model.up_layers.named_parameters())


def test_trainable_counts_are_the_adapters_and_the_decoder():
    """Mona's count from its formula, per block width; the encoder frozen (SegResNet's stem with it), the decoder
    trains; 'full' trains everything."""
    unetr = build("unetr")
    counts = parameter_counts(unetr)
    assert counts["adapter"] == (2 * 12 * mona_size(48, 8),) * 2  # two per block, 12 blocks, all trainable
    assert counts["encoder"][1] == 0 and counts["decoder"][0] == counts["decoder"][1] > 0
    segresnet = build("segresnet")
    counts = parameter_counts(segresnet)
    widths = [8] + [16] * 2 + [32] * 2 + [64] * 4  # blocks_down (1, 2, 2, 4) at 8, 16, 32, 64 channels
    assert counts["adapter"] == (sum(mona_size(w, 8) for w in widths),) * 2
    assert counts["encoder"][1] == 0 and not segresnet.convInit.conv.weight.requires_grad
    assert counts["decoder"][0] == counts["decoder"][1] > 0
    full = parameter_counts(build("segresnet", "full"))
    assert all(total == trainable for total, trainable in full.values())


@pytest.mark.parametrize(("name", "method", "reason"), [
    ("segresnet", "adaptformer", "needs parallel adapter slots, which monai-segresnet blocks do not have"),
    ("unetr", "vpt-shallow", "not monai-vit backbones"),
])
def test_methods_the_family_does_not_define_are_refused_in_one_line(name, method, reason):
    with pytest.raises(UserError, match=reason) as refused:
        build(name, method)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("method", ["lora", "adapter", "vpt-deep", "convpass", "fact-tt", "fact-tk"])
def test_other_token_methods_train_in_unetr(method):
    model = build("unetr", method).train()
    model(torch.randn(1, 1, 32, 32, 32)).square().mean().backward()
    adapters = [p for p in encoder(model, "unetr").parameters() if p.requires_grad]
    assert adapters and all(p.grad is not None for p in adapters)  # zero-initialised halves get zero grads first
    assert sum(p.grad.abs().sum() for p in adapters) > 0


@pytest.mark.parametrize("method", ["fact-tt", "fact-tk"])
def test_fact_factors_of_monai_vit_blocks_merge_exactly(method):
    """MONAI's blocks register their MLP before the attention: FacT must still factor qkv, out_proj, fc1, fc2
    (in that order) and fold into them."""
    from domainmona.adapters import merge

    torch.manual_seed(0)
    model = build("unetr", method).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        before = model(x)
        after = merge(model)(x)
    assert (before - after).abs().max().item() < 1e-5 * before.abs().max().item() + 1e-5


def test_an_adapter_file_of_another_family_is_refused(tmp_path):
    save_adapter(encoder(build("unetr"), "unetr"), tmp_path / "unetr.safetensors")
    segresnet = build("segresnet")
    with pytest.raises(UserError, match="is for backbone monai-vit/ViT/.*this model's is monai-segresnet/"):
        load_adapter(encoder(segresnet, "segresnet"), tmp_path / "unetr.safetensors")
    unetr = build("unetr", seed=0)
    load_adapter(encoder(unetr, "unetr"), tmp_path / "unetr.safetensors")  # the same family and weights load


# --- pretrained weights -----------------------------------------------------------------------------------------

def test_a_model_zoo_unetr_checkpoint_and_a_plain_vit_state_dict_load_with_counts(tmp_path, capsys):
    torch.manual_seed(5)
    zoo = UNETR(1, 14, 32, **UNETR_TINY)  # BTCV's 14 classes: the output conv does not fit 4
    torch.save({"state_dict": zoo.state_dict(), "epoch": 3}, tmp_path / "unetr_btcv.pt")
    torch.save({f"module.{k}": v for k, v in zoo.vit.state_dict().items()}, tmp_path / "ssl_vit.pt")
    model = assemble(settings_for("unetr")["model"], 4, roi=32, pretrained=tmp_path / "unetr_btcv.pt", verbose=True)
    report = capsys.readouterr().out
    whole = len(zoo.state_dict())
    assert (f"(monai-unetr layout): loaded {whole - 2} tensors, 0 missing, 0 unexpected, 2 re-initialised "
            "(output head: 14 classes in the file, 4 here)") in report
    torch.testing.assert_close(model.vit.blocks[3].attn.qkv.weight, zoo.vit.blocks[3].attn.qkv.weight)
    torch.testing.assert_close(model.decoder2.transp_conv.conv.weight, zoo.decoder2.transp_conv.conv.weight)
    plain = assemble(settings_for("unetr")["model"], 4, roi=32)
    assert load_network_weights(plain, "unetr", tmp_path / "ssl_vit.pt", verbose=True) == len(zoo.vit.state_dict())
    assert f"(monai-vit layout): loaded {len(zoo.vit.state_dict())} tensors, 0 missing, 0 unexpected" in \
        capsys.readouterr().out
    torch.testing.assert_close(plain.vit.norm.weight, zoo.vit.norm.weight)
    # a self-supervised ViT with MONAI's other patch embedding (perceptron: Linear on flattened 16^3 patches)
    # and another patch grid (48^3 input: 3^3 patches) loads into the conv UNETR at 32^3 (2^3 patches)
    perceptron = ViT(1, img_size=48, patch_size=16, proj_type="perceptron", num_layers=12, classification=False,
                     hidden_size=UNETR_TINY["hidden_size"], mlp_dim=UNETR_TINY["mlp_dim"],
                     num_heads=UNETR_TINY["num_heads"])
    torch.save(perceptron.state_dict(), tmp_path / "perceptron_vit.pt")
    loaded = load_network_weights(plain, "unetr", tmp_path / "perceptron_vit.pt", verbose=True)
    assert loaded == len(zoo.vit.state_dict()) and "0 missing, 0 unexpected" in capsys.readouterr().out
    patches = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        ours = plain.vit.patch_embedding.patch_embeddings(patches).flatten(2).transpose(1, 2)
        theirs = perceptron.patch_embedding.patch_embeddings(patches)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)  # the same projection of each patch
    torch.save({"encoder.layers1.weight": torch.ones(3)}, tmp_path / "swin.pt")
    with pytest.raises(UserError, match="no tensor fits"):
        load_network_weights(plain, "unetr", tmp_path / "swin.pt")


# --- settings and checkpoints --------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "roi", "message"), [
    ("unetr", 40, "UNETR needs a multiple of 16, at least 32"),
    ("unetr", 16, "at least 32"),
    ("segresnet", 12, "SegResNet needs a multiple of 8, at least 16"),
    ("swinunetr", 48, "SwinUNETR needs a multiple of 32"),
])
def test_each_network_refuses_the_rois_it_cannot_take(name, roi, message):
    with pytest.raises(UserError, match=message):
        load_settings(None, model={"name": name}, train={"roi": roi})
    assert load_settings(None, model={"name": name}, train={"roi": 64})["model"]["name"] == name


def test_network_settings_are_checked_and_merged_key_by_key(tmp_path):
    with pytest.raises(UserError, match="--model vnet: choose from swinunetr, unetr, segresnet"):
        load_settings(None, model={"name": "vnet"})
    with pytest.raises(UserError, match="model.unetr.hidden_size 50: must be a multiple of num_heads 12"):
        load_settings(None, model={"unetr": {"hidden_size": 50}})
    with pytest.raises(UserError, match="init_filters 12: must be a multiple of 8"):
        load_settings(None, model={"segresnet": {"init_filters": 12}})
    with pytest.raises(UserError, match="unknown key.*depth.*model.unetr"):
        load_settings(None, model={"unetr": {"depth": 4}})
    with pytest.raises(UserError, match="--checkpoint-blocks: SwinUNETR only"):
        load_settings(None, model={"name": "segresnet", "use_checkpoint": True})
    merged = load_settings(None, model={"unetr": {"hidden_size": 96}})["model"]["unetr"]
    assert merged == {"feature_size": 16, "hidden_size": 96, "mlp_dim": 3072, "num_heads": 12}


def test_a_checkpoint_from_before_model_name_rebuilds_swinunetr(tmp_path):
    from domainmona.medical.checkpoint import load_checkpoint, save_checkpoint

    settings = load_settings(None)
    for key in ("name", "unetr", "segresnet"):
        del settings["model"][key]
    save_checkpoint(tmp_path / "old.pt", model={}, settings=settings, num_classes=4, label_names={"1": "liver"})
    assert load_checkpoint(tmp_path / "old.pt")["settings"]["model"]["name"] == "swinunetr"


# --- the command line, end to end ----------------------------------------------------------------------------

def _run(args: list[str]):
    from typer.testing import CliRunner

    from domainmona.cli import app

    return CliRunner().invoke(app, args)


def test_swin_only_flags_and_undefined_methods_are_refused_before_any_work(dataset, tmp_path):
    work = tmp_path / "run"
    common = ["segment-ct", "train", "--data", str(dataset), "--work-dir", str(work), "--gpus", "0"]
    result = _run(common + ["--model", "unetr", "--feature-size", "24"])
    assert isinstance(result.exception, UserError) and "--feature-size: a SwinUNETR option" in str(result.exception)
    result = _run(common + ["--model", "segresnet", "--adapter", "adaptformer", "--roi", "32"])
    assert isinstance(result.exception, UserError)
    assert "method 'adaptformer' needs parallel adapter slots" in str(result.exception)
    assert not work.exists()


@pytest.mark.parametrize("name", ["unetr", "segresnet"])
def test_train_predict_evaluate_with_mona(name, dataset, tmp_path):
    """`segment-ct train --model NAME --adapter mona` → predict in the scanner's geometry → evaluate; resume
    rebuilds the network from the checkpoint; the adapter file holds Monas only."""
    from safetensors.torch import load_file

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    train = ["segment-ct", "train", "--model", name, "--adapter", "mona", "--data", str(dataset), "--work-dir",
             str(tmp_path / "run"), "--shots", "2", "--config", str(config), "--gpus", "0"]
    result = _run(train)
    assert result.exit_code == 0, result.output
    checkpoints = tmp_path / "run" / "checkpoints"
    best = checkpoints / "best.pt"
    assert Path(result.stdout.strip().splitlines()[-1]) == best
    state = torch.load(best, weights_only=True)
    assert state["settings"]["model"]["name"] == name
    inside = [k for k in load_file(checkpoints / "best_adapter.safetensors") if k.startswith(f"{encoder_modules(name)[0]}.")]
    slots = (".post_block.",) if name == "segresnet" else (".post_attn.", ".post_mlp.")
    assert inside and all(any(s in k for s in slots) for k in inside)  # of the encoder, only its Monas
    result = _run(train + ["--resume", "--max-epochs", "2"])
    assert result.exit_code == 0, result.output
    assert torch.load(checkpoints / "last.pt", weights_only=True)["epoch"] == 2

    image = load_split(dataset, shots=2).val[0]["image"]
    result = _run(["segment-ct", "predict", image, "--checkpoint", str(best), "--out", str(tmp_path / "pred")])
    assert result.exit_code == 0, result.output
    written, original = nib.load(result.stdout.strip().splitlines()[-1]), nib.load(image)
    assert written.shape == original.shape
    torch.testing.assert_close(torch.as_tensor(written.affine), torch.as_tensor(original.affine))
    result = _run(["segment-ct", "evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(dataset / "labelsTr"),
                   "--json", str(tmp_path / "scores.json")])
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert list(scores["classes"]) == ["liver", "spleen", "kidney"]
    assert all(0.0 <= c["dice"] <= 1.0 and math.isfinite(c["dice"]) for c in scores["classes"].values())


def test_demo_recipe_gives_each_network_its_own_lr():
    """pipelines/ct-demo.yaml's `networks` entries update the recipe's settings for the chosen network only
    (at the SwinUNETR lr of 1e-2 UNETR and SegResNet collapse to background)."""
    from domainmona.medical.demo import demo_settings
    from domainmona.recipes import load_recipe

    recipe = load_recipe("ct-demo")
    before = copy.deepcopy(recipe)
    swin = demo_settings(recipe)
    assert swin["model"]["name"] == "swinunetr" and swin["train"]["lr"] == 1e-2
    for network in ("unetr", "segresnet"):
        settings = demo_settings(recipe, max_epochs=3, model=network, adapter="lora")
        assert settings["train"]["lr"] == settings["train"]["adapter_lr"] == 1e-3
        assert settings["train"]["max_epochs"] == 3 and settings["model"]["adapter"] == "lora"
        assert settings["train"]["roi"] == swin["train"]["roi"]  # the other keys of the section stay
    assert recipe == before  # the recipe mapping itself is not changed

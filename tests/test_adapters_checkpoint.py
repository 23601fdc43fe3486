"""Adapter files (save/load, refusals), official Mona checkpoints and pretrained weights in every layout."""

import pytest
import torch
from torch import nn

from domainmona.adapters import (METHOD_NAMES, inject, load_adapter, load_official_mona, load_pretrained,
                                 save_adapter)
from domainmona.adapters.inject import is_adapter_parameter
from domainmona.adapters.pretrained import detect_layout
from domainmona.errors import UserError

swin = pytest.importorskip("mmdet.models.backbones.swin")
timm = pytest.importorskip("timm")

# A tiny Swin that mmdet and timm compute identically: every stage but the last is larger than the window
# (timm drops the shift when a map fits in one window, mmdet does not), the last stage has one unshifted block.
TINY = dict(embed=16, depths=(2, 2, 2, 1), heads=(1, 1, 2, 2), window=2)
IMAGE = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(9))


def mmdet_swin(seed=0, embed=TINY["embed"]):
    torch.manual_seed(seed)
    return swin.SwinTransformer(embed_dims=embed, depths=TINY["depths"], num_heads=TINY["heads"],
                                window_size=TINY["window"], drop_path_rate=0.0)


def timm_swin(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, embed_dim=TINY["embed"],
                             depths=TINY["depths"], num_heads=TINY["heads"], window_size=TINY["window"])


def detector(seed=0, **kwargs):
    model = nn.ModuleDict({"backbone": mmdet_swin(seed, **kwargs), "neck": nn.Conv2d(8 * TINY["embed"], 4, 1)})
    model.forward = lambda x: model["neck"](model["backbone"](x)[-1])
    return model


def randomise(model, only_adapters=False, seed=3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not only_adapters or is_adapter_parameter(name):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if name.endswith("gammax") else 0.0))
    return model


def outputs(model):
    model.eval()
    with torch.no_grad():
        return model(IMAGE)


@pytest.mark.parametrize("method", [m for m in METHOD_NAMES if m != "vpt-shallow"])  # plain ViTs only
def test_round_trip_restores_identical_outputs(tmp_path, method):
    """Every method's tensors, as recorded at injection (whatever their names), and the neck travel."""
    trained = inject(detector(), method)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    path = save_adapter(trained, tmp_path / "task.safetensors", modules_to_save=["neck"])
    for fresh in (inject(detector(), method), detector()):  # injected already, or injected by load_adapter
        load_adapter(fresh, path)
        torch.testing.assert_close(outputs(fresh), outputs(trained), rtol=0, atol=0)
    assert not list(tmp_path.glob(".*"))  # nothing half-written left behind


@pytest.mark.parametrize("method", ["mona", "vpt-deep"])
def test_file_holds_only_trainable_tensors_and_metadata(tmp_path, method):
    """vpt-deep: not the position index buffers of the frozen attentions its prompts joined."""
    from safetensors import safe_open

    model = inject(detector(), method)
    path = save_adapter(model, tmp_path / "a.safetensors", modules_to_save=("neck",))
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert keys == {n for n, p in model.named_parameters() if p.requires_grad}
    assert meta["method"] == method and meta["prefix"] == "backbone" and meta["backbone"].startswith("mmdet-swin/")
    assert meta["modules_to_save"] == '["neck"]'
    assert len(meta["base_fingerprint"]) == 32 and meta["version"]


def test_batchnorm_statistics_of_trained_norms_travel_with_the_adapter(tmp_path):
    def resnet():
        torch.manual_seed(0)
        return timm.create_model("resnet10t", pretrained=False)

    trained = inject(resnet(), "normtuning")
    trained.train()
    trained(torch.randn(4, 3, 32, 32))  # updates running statistics of the trainable BatchNorms
    path = save_adapter(trained, tmp_path / "bn.safetensors")
    fresh = load_adapter(resnet(), path)
    torch.testing.assert_close(outputs_of(fresh), outputs_of(trained), rtol=0, atol=0)


def outputs_of(model):
    model.eval()
    with torch.no_grad():
        return model(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)))


def test_frozen_batchnorm_statistics_do_not_move_in_train_mode():
    torch.manual_seed(0)
    model = inject(timm.create_model("resnet10t", pretrained=False), "mona")
    before = model.bn1.running_mean.clone()
    model.train()
    model(torch.randn(2, 3, 32, 32))
    assert not model.bn1.training
    torch.testing.assert_close(model.bn1.running_mean, before, rtol=0, atol=0)


def test_mismatches_are_refused_with_the_reason(tmp_path):
    path = save_adapter(inject(detector(), "mona"), tmp_path / "a.safetensors", modules_to_save=["neck"])
    with pytest.raises(UserError, match="is for backbone mmdet-swin/SwinTransformer"):
        load_adapter(inject(detector(embed=32), "mona"), path)
    with pytest.raises(UserError, match="trained on other base weights"):
        load_adapter(inject(detector(seed=1), "mona"), path)
    with pytest.raises(UserError, match="holds a 'mona' adapter"):
        load_adapter(inject(detector(), "mona", inner_dim=32), path)
    with pytest.raises(UserError, match="lacks 2 trainable tensors of this model"):
        bigger = detector()
        bigger["head"] = nn.Linear(2, 2)
        load_adapter(bigger, path)


def test_a_trainable_tensor_neither_adapter_nor_in_modules_to_save_is_refused_and_nothing_written(tmp_path):
    model = inject(detector(), "lora")
    with pytest.raises(UserError, match=r"^'neck.weight' trains but is neither an adapter tensor nor in "
                                        r"modules_to_save \(none given; 2 such tensors\): name its module"):
        save_adapter(model, tmp_path / "a.safetensors")
    with pytest.raises(UserError, match="names module 'head' in modules_to_save, which ModuleDict does not have"):
        save_adapter(model, tmp_path / "a.safetensors", modules_to_save=["neck", "head"])
    assert not list(tmp_path.iterdir())


def test_modules_to_save_hold_their_buffers_and_a_model_without_them_is_refused(tmp_path):
    from safetensors import safe_open

    trained = inject(detector(), "mona")
    trained["norm"] = nn.BatchNorm2d(4)
    trained["norm"].running_mean.fill_(0.5)
    path = save_adapter(trained, tmp_path / "a.safetensors", modules_to_save=["neck", "norm"])
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
    adapters = {n for n, p in trained["backbone"].named_parameters() if p.requires_grad}
    assert keys - {f"backbone.{n}" for n in adapters} == {"neck.weight", "neck.bias", "norm.weight", "norm.bias",
                                                          "norm.running_mean", "norm.running_var",
                                                          "norm.num_batches_tracked"}
    restored = detector()
    restored["norm"] = nn.BatchNorm2d(4)
    assert load_adapter(restored, path)["norm"].running_mean.eq(0.5).all()
    with pytest.raises(UserError, match="a.safetensors names module 'norm' in modules_to_save, which ModuleDict"):
        load_adapter(detector(), path)


def test_files_written_before_modules_to_save_restore_what_they_hold(tmp_path):
    from safetensors.torch import load_file, save_file

    from domainmona.adapters.checkpoint import read_adapter

    trained = randomise(inject(detector(), "mona"), only_adapters=True)
    path = save_adapter(trained, tmp_path / "new.safetensors", modules_to_save=["neck"])
    _, meta = read_adapter(path)
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(path)), str(old), metadata={k: v for k, v in meta.items() if k != "modules_to_save"})
    fresh = load_adapter(detector(), old)
    torch.testing.assert_close(outputs(fresh), outputs(trained), rtol=0, atol=0)


def test_fused_models_are_not_saved_as_adapters(tmp_path):
    from domainmona.adapters import fuse

    with pytest.raises(UserError, match="save the adapter before calling fuse"):
        save_adapter(fuse(inject(detector(), "mona")), tmp_path / "a.safetensors")
    assert not list(tmp_path.iterdir())


def test_unreadable_files_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_adapter(detector(), junk)
    with pytest.raises(UserError, match="adapter file .*: no such file"):
        load_adapter(detector(), tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(UserError, match="not a domainmona adapter"):
        load_adapter(detector(), plain)


def _microsoft_layout(timm_state: dict) -> dict:
    """Official Microsoft Swin keys from timm's (timm moved each patch merging to the next stage's start)."""
    out = {}
    for key, value in timm_state.items():
        parts = key.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            parts[1] = str(int(parts[1]) - 1)
        out[".".join(parts)] = value
    return out


def _mmdet_features(model):
    return model(IMAGE)[-1]


def _timm_features(model):
    return model.forward_features(IMAGE).permute(0, 3, 1, 2)


def test_microsoft_weights_give_mmdet_and_timm_swin_the_same_features(tmp_path):
    source = randomise(timm_swin(seed=5))
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": _microsoft_layout(source.state_dict())}, path)
    mm, tm = mmdet_swin(), timm_swin()
    mm_report, tm_report = load_pretrained(mm, path), load_pretrained(tm, path)
    assert mm_report.layout == tm_report.layout == "microsoft-swin"
    assert "norm3.weight" in mm_report.missing and "norm.weight" in mm_report.unexpected
    mm.norm3.load_state_dict(tm.norm.state_dict())  # the classification norm is stage 4's output norm
    for model in (mm, tm):
        model.eval()
    with torch.no_grad():
        torch.testing.assert_close(_mmdet_features(mm), _timm_features(tm), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(_timm_features(tm), _timm_features(source.eval()), rtol=0, atol=0)


def test_official_leiyi_hu_mona_checkpoint_loads_into_mmdet_swin(tmp_path):
    """Mona trained in the official code (mmdet 2.x, Microsoft layout, `my_module_1/2`), here made from a timm
    Swin with Mona: the mmdet Swin must compute the same features after loading it."""
    source = randomise(inject(timm_swin(seed=5), "mona"))
    state = {f"backbone.{k}".replace(".post_attn.", ".my_module_1.").replace(".post_mlp.", ".my_module_2."): v
             for k, v in _microsoft_layout(source.state_dict()).items()}
    path = tmp_path / "mona_voc.pth"
    torch.save({"meta": {"epoch": 12, "CLASSES": ("plane",)}, "state_dict": state}, path)
    target = inject(mmdet_swin(), "mona")
    report = load_official_mona(target, path)
    assert report.layout == "leiyi-hu-mona" and report.loaded > 0
    assert not [k for k in report.missing if is_adapter_parameter(k)]
    target.norm3.load_state_dict(source.norm.state_dict())
    target.eval()
    source.eval()
    with torch.no_grad():
        torch.testing.assert_close(_mmdet_features(target), _timm_features(source), rtol=1e-4, atol=1e-4)


def test_official_star_mmrotate_checkpoint_loads_backbone_and_neck(tmp_path):
    source = randomise(inject(detector(seed=5), "mona"))
    state = {k.replace(".post_attn.", ".mona1.").replace(".post_mlp.", ".mona2."): v
             for k, v in source.state_dict().items()}
    path = tmp_path / "star_mona.pth"
    torch.save({"state_dict": state}, path)
    target = detector()  # no adapters yet: loading injects Mona
    report = load_official_mona(target, path)
    assert report.layout == "star-mmrotate"
    assert (report.loaded, report.missing, report.unexpected) == (len(state), [], [])
    torch.testing.assert_close(outputs(target), outputs(source), rtol=0, atol=0)


def test_official_loader_refuses_other_files_and_other_sizes(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": mmdet_swin().state_dict()}, path)
    with pytest.raises(UserError, match="no official Mona weights"):
        load_official_mona(detector(), path)
    small = {f"backbone.{k}".replace(".post_attn.", ".mona1."): v
             for k, v in inject(mmdet_swin(), "mona").state_dict().items() if "stages.3" not in k}
    torch.save({"state_dict": small}, path)
    with pytest.raises(UserError, match="lacks .* Mona tensors"):
        load_official_mona(detector(), path)


def test_openmmlab_and_timm_layouts_load_completely(tmp_path):
    source = randomise(mmdet_swin(seed=5))
    path = tmp_path / "mmdet_swin.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in source.state_dict().items()}
                | {"neck.fpn.weight": torch.zeros(1)}}, path)
    target = inject(mmdet_swin(), "mona")
    report = load_pretrained(target, path)
    assert report.layout == "openmmlab-swin"
    assert (report.loaded, report.missing, report.unexpected) == (len(source.state_dict()), [], [])
    timm_path = tmp_path / "timm_swin.safetensors"
    from safetensors.torch import save_file

    save_file(randomise(timm_swin(seed=5)).state_dict(), str(timm_path))
    report = load_pretrained(inject(timm_swin(), "lora"), timm_path)
    assert report.layout == "timm-swin" and report.loaded and not report.unexpected


def test_layout_detection():
    assert detect_layout({"layers1.0.blocks.0.mlp.fc1.weight": 0}) == "monai-ssl"
    assert detect_layout({"stages.0.blocks.0.attn.w_msa.qkv.weight": 0}) == "openmmlab-swin"
    assert detect_layout({"layers.0.downsample.reduction.weight": 0}) == "microsoft-swin"
    assert detect_layout({"layers.1.downsample.reduction.weight": 0}) == "timm-swin"
    assert detect_layout({"conv1.weight": 0}) == "plain"


class NotWeights:
    """Any pickled object that is not plain data: weights_only loading must refuse to build it."""


def test_pretrained_loading_never_runs_pickled_code_and_never_loads_nothing(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": NotWeights()}}, evil)
    with pytest.raises(UserError, match="refused to load"):
        load_pretrained(mmdet_swin(), evil)
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, unrelated)
    with pytest.raises(UserError, match="no tensor fits this mmdet-swin backbone"):
        load_pretrained(mmdet_swin(), unrelated)
    with pytest.raises(UserError, match="weights file .*: no such file"):
        load_pretrained(mmdet_swin(), tmp_path / "nope.pth")


def test_openmmlab_weights_give_timm_swin_the_same_features(tmp_path):
    """The inverse of mmdet's swin_converter: an OpenMMLab checkpoint (e.g. the shipped micro Swin, or an
    mmdet/mmrotate backbone) loads into a timm Swin and both compute the same features."""
    source = mmdet_swin()
    with torch.no_grad():
        for p in source.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    path = tmp_path / "openmmlab_swin.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in source.state_dict().items()}}, path)
    target = timm_swin()
    report = load_pretrained(target, path)
    assert report.layout == "openmmlab-swin"
    # only the classifier and its norm have no OpenMMLab counterpart
    assert sorted(report.missing) == ["head.fc.bias", "head.fc.weight", "norm.bias", "norm.weight"]
    target.norm.load_state_dict(source.norm3.state_dict())
    for model in (source, target):
        model.eval()
    with torch.no_grad():
        torch.testing.assert_close(_timm_features(target), _mmdet_features(source), rtol=1e-4, atol=1e-4)

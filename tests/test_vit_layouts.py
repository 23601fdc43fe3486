"""Plain-ViT foundation-model weights in the layouts users download (domainmona.adapters.pretrained): timm/DeiT, MAE,
DINO, MoCo, Prithvi (3D patch embedding, 3D sin-cos frames, MAE decoder), SAM's image encoder and MONAI's UNETR ViT.
Each test writes a small seeded model's own weights in one layout and loads them into another: the report's layout
and counts, the loaded tensors equal to the file's (or to its resampled position embeddings), the same outputs;
weights for another width or band count are refused in one line and load nothing. Also the SAM ViT family's
adapters (domainmona.adapters.families.vit_sam) and the two registered backbones."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from domainmona.adapters import inject, load_pretrained
from domainmona.adapters.backbones import build_backbone, get_backbone
from domainmona.adapters.backbones.vit import PRITHVI_MEAN
from domainmona.adapters.inject import is_adapter_parameter
from domainmona.adapters.weights import canonical_name
from domainmona.errors import UserError

TINY = {"embed_dim": 64, "depth": 2, "num_heads": 2}  # a ViT-B's layout at a few thousandths of its size


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every float tensor moved off its init (norms included, so that loading them shows)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return model.eval()


def vit(seed: int, bands: int = 3, name: str = "vit-s-16", **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_backbone(name, in_chans=bands, **TINY, **{"img_size": 64, **options}).eval()


def own(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A timm features module's backbone tensors under the bare timm model's names."""
    return {canonical_name(k).removeprefix("model."): v for k, v in model.body.state_dict().items()}


def assert_loaded(target: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = own(target) if hasattr(target, "body") else target.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


def refused(target: torch.nn.Module, path, message: str) -> None:
    """The file is refused in one line and nothing loads."""
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(UserError, match=message) as error:
        load_pretrained(target, path)
    assert "\n" not in str(error.value)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


# -- timm, DeiT, MAE, DINO, MoCo: every wrapper, and position embeddings resampled to a non-square grid ---------

def _full_timm_state(source: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole timm model's state dict (head and final norm too): the source's tensors, zeros elsewhere."""
    with torch.device("meta"):
        full = timm.create_model("vit_small_patch16_224", img_size=64, **TINY).state_dict()
    state = own(source)
    return {k: state[k] if k in state else torch.zeros(v.shape) for k, v in full.items()}


def _wrap(layout: str, state: dict[str, torch.Tensor]) -> tuple[dict, int]:
    """The file each training recipe saves, and how many of its tensors stay unused."""
    extra = {k: v for k, v in state.items() if k.startswith(("head.", "norm."))}
    if layout == "timm":
        return state, len(extra)
    if layout == "mae":  # MAE/DeiT/SatMAE: the decoder and the final norm unused
        decoder = {"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.zeros(32, 64)}
        return {"model": state | decoder, "epoch": 9}, len(extra) + len(decoder)
    encoder = {k: v for k, v in state.items() if k not in extra}
    if layout == "dino":
        teacher = {f"backbone.{k}": v for k, v in encoder.items()} | {"head.mlp.0.weight": torch.zeros(8, 64)}
        return {"teacher": teacher, "student": {k: torch.zeros_like(v) for k, v in teacher.items()}}, 0
    encoders = {f"module.{e}.{k}": v for e in ("base_encoder", "momentum_encoder") for k, v in encoder.items()}
    return {"state_dict": encoders | {"module.base_encoder.head.0.weight": torch.zeros(8, 64)}}, 0


@pytest.mark.parametrize("layout", ["timm", "mae", "dino", "moco"])
def test_every_vit_wrapper_loads_into_a_non_square_model_with_its_counts(tmp_path, layout):
    """The file's 4x4 grid (64 px) resampled to the 4x6 grid of a model built at 64x96; then each input's grid."""
    from timm.layers import resample_abs_pos_embed

    source = perturbed(vit(0))
    data, unused = _wrap(layout, _full_timm_state(source))
    path = tmp_path / "vit.pth"
    torch.save(data, path)
    target = vit(1, img_size=(64, 96))
    report = load_pretrained(target, path)
    assert (report.layout, report.loaded, report.missing) == (layout, len(own(target)), [])
    assert len(report.unexpected) == unused, report.unexpected
    expected = own(source)
    expected["pos_embed"] = resample_abs_pos_embed(expected["pos_embed"], [4, 6], [4, 4], num_prefix_tokens=1)
    assert_loaded(target, expected)
    with torch.no_grad():  # an input of another size: timm resamples the loaded grid again
        maps = target.body(torch.rand(1, 3, 96, 32))
    assert maps[-1].shape == (1, 64, 6, 2)


def test_distilled_deit_drops_its_distillation_token_and_its_position_row(tmp_path):
    source = perturbed(vit(0))
    state = own(source)
    cls, patches = state["pos_embed"][:, :1], state["pos_embed"][:, 1:]
    deit = state | {"pos_embed": torch.cat([cls, torch.randn(1, 1, 64), patches], dim=1),
                    "dist_token": torch.zeros(1, 1, 64), "head_dist.weight": torch.zeros(10, 64)}
    path = tmp_path / "deit_small_distilled.pth"
    torch.save({"model": deit}, path)
    target = vit(1)
    report = load_pretrained(target, path)
    assert (report.loaded, report.missing, sorted(report.unexpected)) == (len(state), [],
                                                                           ["dist_token", "head_dist.weight"])
    assert_loaded(target, state)


# -- Prithvi ----------------------------------------------------------------------------------------------------

def sincos(width: int, positions: torch.Tensor) -> torch.Tensor:
    """MAE's 1D sin-cos embedding: sines then cosines of the positions at 1 / 10000^(2i/width)."""
    omega = 1.0 / 10000 ** (torch.arange(width // 2, dtype=torch.float64) / (width / 2))
    angles = positions.double()[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def prithvi_pos_embed(dim: int, frames: int, height: int, width: int) -> torch.Tensor:
    """Prithvi's fixed 3D sin-cos position embedding by its recipe: per patch (t, h, w), frames outermost and w
    fastest, the concatenation of w, h and t embeddings of 6/16, 6/16 and 4/16 of the width; a zero class row."""
    t, h, w = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    rows = torch.cat([sincos(dim // 16 * 6, w.flatten()), sincos(dim // 16 * 6, h.flatten()),
                      sincos(dim // 16 * 4, t.flatten())], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), rows]).float().unsqueeze(0)


def prithvi_file(source: torch.nn.Module, frames: int = 3, nested: bool = False) -> dict[str, torch.Tensor]:
    """`Prithvi_100M.pt` of a tiny Prithvi: the encoder with a Conv3d patch embedding (tubelet 1) and the 3D sin-cos
    position embedding of `frames` frames of 4x4 patches, the final norm and the MAE decoder; 2.0 (`nested`)
    puts them under `encoder.` and `decoder.`."""
    state = own(source)
    encoder = state | {"patch_embed.proj.weight": state["patch_embed.proj.weight"].unsqueeze(2),
                       "pos_embed": prithvi_pos_embed(64, frames, 4, 4),
                       "norm.weight": torch.ones(64), "norm.bias": torch.zeros(64)}
    decoder = {"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.zeros(32, 64),
               "decoder_pos_embed": torch.zeros(1, 1 + frames * 16, 32), "decoder_blocks.0.norm1.weight":
               torch.ones(32), "decoder_norm.weight": torch.ones(32), "decoder_pred.weight": torch.zeros(1536, 32)}
    if nested:
        return {f"encoder.{k}": v for k, v in encoder.items()} | {f"decoder.{k}": v for k, v in decoder.items()}
    return encoder | decoder


def test_a_prithvi_checkpoint_gives_the_patch_tokens_of_a_direct_computation(tmp_path):
    """Conv3d on the (B, 6, 1, H, W) image plus the first frame's sin-cos rows, as Prithvi computes one frame; all
    6 pretrained band filters kept; the MAE decoder and the final norm (pruned with the head) unused."""
    source = perturbed(vit(0, bands=6, name="prithvi-100m"))
    data = prithvi_file(source)
    path = tmp_path / "Prithvi_100M.pt"
    torch.save(data, path)
    target = vit(1, bands=6, name="prithvi-100m")
    report = load_pretrained(target, path)
    assert (report.layout, report.loaded, report.missing, report.inflated) == ("prithvi", len(own(target)), [], [])
    assert sorted(report.unexpected) == sorted(k for k in data if k.startswith(("decoder", "mask_token", "norm.")))
    model = target.body.model.double()
    image = torch.rand(2, 6, 64, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        tokens = model._pos_embed(model.patch_embed(image))[:, 1:]
        direct = F.conv3d(image.unsqueeze(2), data["patch_embed.proj.weight"].double(),
                          data["patch_embed.proj.bias"].double(), stride=(1, 16, 16))
        direct = direct.flatten(2).transpose(1, 2) + data["pos_embed"][:, 1:17].double()
    torch.testing.assert_close(tokens, direct, rtol=0, atol=1e-6)
    assert model.blocks[0].norm1.eps == 1e-5  # Prithvi's MAE norms: torch's LayerNorm
    assert len(get_backbone("prithvi-100m").mean) == 6 and get_backbone("prithvi-100m").mean[0] == pytest.approx(
        775.2290211032589 / 10000) == PRITHVI_MEAN[0]


def test_prithvi_2_nesting_loads_its_first_frame_resampled_to_a_non_square_grid(tmp_path):
    from timm.layers import resample_abs_pos_embed

    source = perturbed(vit(0, bands=6, name="prithvi-100m"))
    data = prithvi_file(source, frames=4, nested=True)
    path = tmp_path / "Prithvi_EO_V2_300M.pt"
    torch.save(data, path)
    target = vit(1, bands=6, name="prithvi-100m", img_size=(64, 96))
    report = load_pretrained(target, path)
    assert (report.layout, report.loaded, report.missing) == ("prithvi", len(own(target)), [])
    assert len(report.unexpected) == 2 + 6  # the final norm, the decoder
    first_frame = data["encoder.pos_embed"][:, :17]
    assert_loaded(target, {k: v for k, v in own(source).items() if k != "pos_embed"} | {
        "pos_embed": resample_abs_pos_embed(first_frame, [4, 6], [4, 4], num_prefix_tokens=1)})


def test_prithvi_bands_are_kept_or_refused(tmp_path):
    """Prithvi's 6 filters into 4 bands: the N-band rule inflates RGB filters only, so the file is refused."""
    path = tmp_path / "Prithvi_100M.pt"
    torch.save(prithvi_file(perturbed(vit(0, bands=6, name="prithvi-100m"))), path)
    refused(vit(1, bands=4, name="prithvi-100m"), path,
            r"input filters 'patch_embed\.proj\.weight' take 6 bands, this backbone 4 .*build it on the file's 6")


def test_a_vit_b_prithvi_file_into_a_vit_s_is_refused_in_one_line(tmp_path):
    vit_b = {"patch_embed.proj.weight": torch.zeros(768, 6, 1, 16, 16), "patch_embed.proj.bias": torch.zeros(768),
             "pos_embed": prithvi_pos_embed(768, 3, 14, 14), "cls_token": torch.zeros(1, 1, 768),
             "blocks.0.attn.qkv.weight": torch.zeros(2304, 768)}
    path = tmp_path / "Prithvi_100M.pt"
    torch.save(vit_b, path)
    torch.manual_seed(0)
    refused(build_backbone("vit-s-16", in_chans=6).eval(), path,
            r"not weights for this timm-vit backbone \(prithvi layout\): 'patch_embed\.proj\.weight' is "
            r"\(768, 6, 16, 16\) in the file, \(384, 6, 16, 16\) here \(5 such tensors\)")


# -- SAM's image encoder ----------------------------------------------------------------------------------------

def tiny_sam(seed: int, img_size: int = 128) -> torch.nn.Module:
    """SAM ViT-B's layout (windowed blocks and one global one, relative positions, neck) at a tiny width."""
    torch.manual_seed(seed)
    return timm.create_model("samvit_base_patch16", img_size=img_size, window_size=3, global_attn_indexes=(1,),
                             neck_chans=16, num_classes=0, **TINY).eval()


def sam_file(source: torch.nn.Module) -> tuple[dict[str, torch.Tensor], int]:
    """The official SAM/MedSAM file: the image encoder under SAM's names, the prompt encoder and the mask decoder
    (whose MLPs are named lin1/lin2 too); and how many of its tensors are not the image encoder's."""
    encoder = {f"image_encoder.{k.replace('.mlp.fc', '.mlp.lin')}": v for k, v in source.state_dict().items()
               if not k.startswith("head.")}
    others = {"prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": torch.zeros(2, 8),
              "prompt_encoder.point_embeddings.0.weight": torch.zeros(1, 16),
              "mask_decoder.transformer.layers.0.mlp.lin1.weight": torch.zeros(32, 16),
              "mask_decoder.iou_token.weight": torch.zeros(1, 16)}
    return encoder | others, len(others)


def blocks(model: torch.nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return model.forward_intermediates(image, intermediates_only=True)


def test_a_sam_checkpoint_gives_the_source_encoders_block_outputs(tmp_path):
    source = perturbed(tiny_sam(0))
    data, unused = sam_file(source)
    path = tmp_path / "medsam_vit_b.pth"
    torch.save(data, path)
    target = tiny_sam(1)
    report = load_pretrained(target, path)
    assert (report.layout, report.loaded, report.missing) == ("sam", len(target.state_dict()), [])
    assert len(report.unexpected) == unused
    image = torch.rand(1, 3, 80, 48, generator=torch.Generator().manual_seed(2))  # windows padded, pos resampled
    for ours, theirs in zip(blocks(target, image), blocks(source, image), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_sam_position_embedding_and_relative_tables_fit_a_model_built_for_smaller_images(tmp_path):
    """The 8x8 grid (128 px) to a 4x4 one: the position embedding resampled as timm does on the fly, the global
    block's relative tables (2*8-1 rows) interpolated to 2*4-1; the windowed blocks' tables fit as they are."""
    from timm.layers import resample_abs_pos_embed_nhwc

    source = perturbed(tiny_sam(0))
    data, _ = sam_file(source)
    path = tmp_path / "sam_vit_b.pth"
    torch.save(data, path)
    target = tiny_sam(1, img_size=64)
    report = load_pretrained(target, path)
    assert (report.loaded, report.missing) == (len(target.state_dict()), [])
    state = source.state_dict()
    table = state["blocks.1.attn.rel_pos_h"]
    expected = {k: v for k, v in state.items() if "rel_pos" not in k and k not in ("pos_embed",)
                and not k.startswith("head.")} | {
        "pos_embed": resample_abs_pos_embed_nhwc(state["pos_embed"], [4, 4]),
        "blocks.0.attn.rel_pos_h": state["blocks.0.attn.rel_pos_h"],
        "blocks.1.attn.rel_pos_h": F.interpolate(table.T[None], size=7, mode="linear")[0].T}
    assert_loaded(target, expected)


def test_the_registered_sam_vit_b_loads_a_timm_named_file(tmp_path):
    """The registered backbone: timm's SAM built at SAM's 1024 px (pos_embed 64x64), its last block's map through
    the simple pyramid; a file under timm's names (the `timm` layout) fills it, the neck unused."""
    spec = get_backbone("sam-vit-b")
    assert (spec.family, spec.channels, spec.pyramid) == ("timm-sam", (192, 384, 768, 768), "simple")
    torch.manual_seed(0)
    with torch.device("meta"):
        shapes = build_backbone("sam-vit-b").body.state_dict()
    assert tuple(shapes["model.pos_embed"].shape) == (1, 64, 64, 768)
    target = vit(1, name="sam-vit-b", window_size=2, global_attn_indexes=(1,))
    data = {k.removeprefix("model."): torch.randn(v.shape) for k, v in target.body.state_dict().items()}
    data |= {"neck.0.weight": torch.zeros(16, 64, 1, 1)}
    path = tmp_path / "samvit.safetensors"
    save_file(data, str(path))
    report = load_pretrained(target, path)
    assert (report.layout, report.loaded, report.missing, report.unexpected) == (
        "timm", len(data) - 1, [], ["neck.0.weight"])
    assert [tuple(m.shape) for m in target(torch.rand(1, 3, 64, 96))] == [(1, 16, 16, 24), (1, 32, 8, 12),
                                                                         (1, 64, 4, 6), (1, 64, 2, 3)]


# -- SAM ViT adapter family -------------------------------------------------------------------------------------

SAM_IMAGE = torch.rand(1, 3, 80, 48, generator=torch.Generator().manual_seed(5))  # 5x3 grid: windows padded


def test_sam_blocks_rewired_without_adapters_compute_what_they_did():
    plain = perturbed(tiny_sam(0))
    for method in ("fixed", "lora", "bitfit", "full"):  # LoRA starts at zero
        adapted = inject(copy.deepcopy(plain), method)
        for ours, theirs in zip(blocks(adapted, SAM_IMAGE), blocks(plain, SAM_IMAGE), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=method)


@pytest.mark.parametrize("method", ["mona", "lora", "adaptformer"])
def test_sam_adapters_train_and_the_encoder_stays_frozen(method):
    model = inject(tiny_sam(0), method).train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_adapter_parameter(name):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.05)
    model.forward_intermediates(SAM_IMAGE, intermediates_only=True)[-1].square().mean().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trainable and trainable == {n for n, _ in model.named_parameters() if is_adapter_parameter(n)}
    assert with_grad == trainable
    if method == "mona":
        assert model.blocks[0].post_attn is not None and model.blocks[1].post_mlp is not None


def test_vpt_deep_is_refused_on_sam_blocks_in_one_line():
    with pytest.raises(UserError, match=r"^method 'vpt-deep' is not defined for timm-sam blocks[^\n]*$"):
        inject(tiny_sam(0), "vpt-deep")


# -- MONAI UNETR ------------------------------------------------------------------------------------------------

def unetr(seed: int, img_size: int = 32, proj_type: str = "conv") -> torch.nn.Module:
    """The UNETR `segment-ct --model unetr` builds, at hidden size 96 (a 2x2x2 patch grid at 32^3)."""
    from monai.networks.nets import UNETR

    torch.manual_seed(seed)
    return UNETR(in_channels=1, out_channels=2, img_size=img_size, feature_size=8, hidden_size=96, mlp_dim=192,
                 num_heads=4, proj_type=proj_type).eval()


VOLUME = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(4))


def _vit_outputs(model: torch.nn.Module) -> list[torch.Tensor]:
    with torch.no_grad():
        last, hidden = model.vit(VOLUME)
    return [last, *hidden]


@pytest.mark.parametrize("layout", ["vit-prefixed", "bare-vit", "whole-unetr"])
def test_monai_vit_weights_load_into_a_unetr_vit_with_counts(tmp_path, layout):
    source = perturbed(unetr(0))
    whole = source.state_dict()
    vit_state = {k: v for k, v in whole.items() if k.startswith("vit.")}
    data = {"vit-prefixed": vit_state, "bare-vit": source.vit.state_dict(),
            "whole-unetr": {"state_dict": {f"module.{k}": v for k, v in whole.items()}}}[layout]
    path = tmp_path / "model.pt"
    torch.save(data, path)
    target = unetr(1)
    report = load_pretrained(target, path)
    assert (report.layout, report.loaded, report.missing) == ("monai-vit", len(vit_state), [])
    assert len(report.unexpected) == (len(whole) - len(vit_state) if layout == "whole-unetr" else 0)
    assert_loaded(target, vit_state)
    for ours, theirs in zip(_vit_outputs(target), _vit_outputs(source), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("saved, built", [("perceptron", "conv"), ("conv", "perceptron")])
def test_perceptron_and_conv_patch_embeddings_load_into_each_other(tmp_path, saved, built):
    source = perturbed(unetr(0, proj_type=saved))
    path = tmp_path / "unetr.pt"
    torch.save(source.state_dict(), path)
    target = unetr(1, proj_type=built)
    report = load_pretrained(target, path)
    assert (report.layout, report.loaded, report.missing) == ("monai-vit", len(target.vit.state_dict()), [])
    for ours, theirs in zip(_vit_outputs(target), _vit_outputs(source), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_monai_position_embeddings_of_another_cubic_grid_are_resampled(tmp_path):
    source = perturbed(unetr(0))
    path = tmp_path / "unetr_32.pt"
    torch.save(source.state_dict(), path)
    target = unetr(1, img_size=64)  # 4x4x4 patches
    report = load_pretrained(target, path)
    assert (report.loaded, report.missing) == (len(target.vit.state_dict()), [])
    theirs = source.vit.patch_embedding.position_embeddings.reshape(1, 2, 2, 2, 96).permute(0, 4, 1, 2, 3)
    expected = F.interpolate(theirs, size=(4, 4, 4), mode="trilinear").flatten(2).transpose(1, 2)
    torch.testing.assert_close(target.vit.patch_embedding.position_embeddings.data, expected, rtol=0, atol=0)

"""The methods put beside Mona (SSF, parallel adapter, FacT-TT/TK, KronA, KAdaptation, VPT, Convpass,
Conv-Adapter): counts, identity at init, what trains, shared factors, refusals."""

import copy

import pytest
import torch
from test_adapters_families import CASES, run

from domainmona.adapters import adapter_parameter_names, inject, load_adapter, save_adapter, trainable_report
from domainmona.adapters.backbones import build_backbone
from domainmona.errors import UserError

NEW_METHODS = ("ssf", "parallel-adapter", "fact-tt", "fact-tk", "krona", "kadaptation", "vpt-deep", "convpass",
               "conv-adapter")
# SSF starts near, not at, an identity; VPT's prompts and Conv-Adapter's alpha = 1 change outputs from the start.
IDENTITY_AT_INIT = ("parallel-adapter", "fact-tt", "fact-tk", "krona", "kadaptation", "convpass")
# The small test backbones are 12 (SwinUNETR feature_size 12) or 16 channels wide at their first stage.
SMALL_OPTIONS = {"krona": {"factor": 4}, "kadaptation": {"n": 4}, "conv-adapter": {"reduction": 4}}
FAMILIES = ("mmdet-swin", "timm-swin", "monai-swin", "timm-vit")


def micro_swin():
    torch.manual_seed(0)
    return build_backbone("micro")


CASES = {**CASES, "mmdet-swin": (micro_swin, lambda m, g: m(torch.randn(1, 3, 64, 64, generator=g)))}

# Swin-T: widths 96/192/384/768, depths 2/2/6/2.
WIDTHS = [96] * 2 + [192] * 2 + [384] * 6 + [768] * 2
STAGES = ((96, 2), (192, 2), (384, 6), (768, 2))
SUM_C = sum(WIDTHS)  # 4,416
R = 16
SWIN_T = {
    # 22C a block + merging norms (2 x 4C after stages 1-3) + patch embed conv and norm + final norm: the notes'
    # 104,448 (one final norm, as in the classification Swin; out_indices=(3,) keeps only that one)
    "ssf": 22 * SUM_C + 2 * 4 * (96 + 192 + 384) + 2 * 2 * 96 + 2 * 768,
    # AdaptFormer's bottleneck (inner 64, both biases) beside every MLP
    "parallel-adapter": sum(2 * 64 * c + 64 + c for c in WIDTHS),
    # per stage 2 d r (U, V) + 12 r^2 a block (Sigma: 3 r^2 qkv, r^2 proj, 4 r^2 fc1, 4 r^2 fc2): the notes' 82,944
    "fact-tt": sum(2 * d * R + 12 * R * R * depth for d, depth in STAGES),
    # per stage 2 d r + core r^3 + P (r x 12 slices a block)
    "fact-tk": sum(2 * d * R + R ** 3 + 12 * depth * R for d, depth in STAGES),
    # A (16 x 16) and B (C/16 x C/16) for q and for v
    "krona": sum(2 * (16 * 16 + (c // 16) ** 2) for c in WIDTHS),
    # A_i shared (16 matrices 16 x 16), rank-one B_i: u, v of C/16 for 16 i, for q and v (4C a block)
    "kadaptation": 16 ** 3 + 4 * SUM_C,
    # p = 10 prompts of width C a block: the notes' 44,160
    "vpt-deep": 10 * SUM_C,
    # two bypasses a block: W_down (C x 8 + 8), 3x3 conv (8 x 8 x 9 + 8), W_up (8 x C + C): the notes' 164,352
    "convpass": sum(2 * (2 * c * 8 + c + 9 * 8 * 8 + 2 * 8) for c in WIDTHS),
    # grouped 7x7 conv C -> C/8 (C/8 groups: C k^2 + C/8), 1x1 back (C^2/8 + C), alpha (C): the notes' 495,336
    "conv-adapter": sum(c * 49 + c // 8 + c * c // 8 + 2 * c for c in WIDTHS),
}


@pytest.mark.parametrize("method", NEW_METHODS)
def test_swin_t_trainable_count_is_the_formula(method):
    model = inject(build_backbone("swin-t", out_indices=(3,)), method)
    report = trainable_report(model)
    assert report.adapter_params == report.trainable_backbone_params == SWIN_T[method]
    assert report.backbone_params == 27_519_354  # mmdet Swin-T with one output norm; adapters not counted
    assert (SWIN_T["ssf"], SWIN_T["fact-tt"], SWIN_T["vpt-deep"], SWIN_T["convpass"], SWIN_T["conv-adapter"]) == (
        104_448, 82_944, 44_160, 164_352, 495_336)


def test_ssf_scales_every_output_norm_of_the_detection_swin():
    """mmdet's detection Swin has one output norm per stage (norm0..norm3), each of which SSF scales."""
    report = trainable_report(inject(build_backbone("swin-t"), "ssf"))
    assert report.adapter_params == SWIN_T["ssf"] + 2 * (96 + 192 + 384)


@pytest.mark.parametrize("method", IDENTITY_AT_INIT)
@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_injection_computes_the_plain_backbone(method, family):
    build, forward = CASES[family]
    plain = build()
    plain.eval()
    adapted = inject(copy.deepcopy(plain), method, **SMALL_OPTIONS.get(method, {}))
    adapted.eval()
    with torch.no_grad():
        for a, b in zip(run(plain, forward), run(adapted, forward)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", NEW_METHODS)
def test_training_changes_exactly_the_methods_tensors(method):
    torch.manual_seed(0)
    model = inject(build_backbone("micro", drop_path_rate=0.0), method, **SMALL_OPTIONS.get(method, {}))
    forward = CASES["mmdet-swin"][1]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # Adam: every tensor with a gradient moves by about lr, however small the gradient (a parameter with none
    # keeps its value exactly)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    gen = torch.Generator().manual_seed(4)
    for _ in range(2):  # zero-initialised factors move first, the factors beside them in the second step
        optimizer.zero_grad()
        sum((o * torch.randn(o.shape, generator=gen)).sum() for o in run(model, forward)).backward()
        optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == adapter_parameter_names(model) == {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", [m for m in NEW_METHODS if m != "conv-adapter"])
def test_cnns_are_refused_in_one_line(method):
    build, _ = CASES["resnet"]
    with pytest.raises(UserError, match=f"method '{method}'.*cnn") as error:
        inject(build(), method)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("method,options,message", [
    ("krona", {"factor": 5}, r"factor=5 must divide every block width \(\[12, 24, 48, 96\]\)"),
    ("kadaptation", {"n": 32}, r"n=32 must divide every block width"),
    ("fact-tt", {"dropout": 1.0}, r"0 <= dropout < 1"),
])
def test_options_that_cannot_work_are_refused(method, options, message):
    with pytest.raises(UserError, match=message):
        inject(CASES["monai-swin"][0](), method, **options)


@pytest.mark.parametrize("method", ["fact-tk", "kadaptation"])
def test_shared_factors_are_owned_once_and_travel_in_adapter_files(method, tmp_path):
    build, forward = CASES["timm-swin"]
    model = inject(build(), method, **SMALL_OPTIONS.get(method, {}))
    owner = model.layers[0].blocks[0].adapter_shared
    shared = {n for n in adapter_parameter_names(model) if ".adapter_shared." in n}
    assert len(shared) == len(list(owner.parameters())) and shared <= set(model.state_dict())
    assert len(model.state_dict()) == len({id(t) for t in model.state_dict().values()})  # no tensor twice
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    twin = copy.deepcopy(model)  # the copy's blocks use the copy's shared factors
    with torch.no_grad():
        for p in twin.layers[0].blocks[0].adapter_shared.parameters():
            p.zero_()
    model.eval()
    twin.eval()
    path = save_adapter(model, tmp_path / "a.safetensors")
    restored = load_adapter(inject(build(), method, **SMALL_OPTIONS.get(method, {})), path)
    restored.eval()
    with torch.no_grad():
        expected = run(model, forward)
        assert not torch.allclose(expected[0], run(twin, forward)[0])
        torch.testing.assert_close(run(restored, forward)[0], expected[0], rtol=0, atol=0)


def test_kronecker_updates_follow_their_formulas():
    """KronA: s (A kron B); KAdaptation: s sum_i A_i kron (u_i v_i^T), A_i shared; q and v rows only."""
    krona = inject(micro_swin(), "krona", factor=4, scale=0.5)
    kadapt = inject(micro_swin(), "kadaptation", n=4, scale=0.5)
    for model in (krona, kadapt):
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(generator=torch.Generator().manual_seed(p.numel()))
    qkv, shared = kadapt.stages[1].blocks[0].attn.w_msa.qkv, kadapt.stages[0].blocks[0].adapter_shared.a
    dim = qkv.in_features
    expected = {part: 0.5 * sum(torch.kron(shared[i], torch.outer(getattr(qkv, f"kadapt_{part}_u")[i],
                                                                   getattr(qkv, f"kadapt_{part}_v")[i]))
                                for i in range(4)) for part in "qv"}
    kron_qkv = krona.stages[1].blocks[0].attn.w_msa.qkv
    for part in "qv":
        expected_krona = 0.5 * torch.kron(getattr(kron_qkv, f"krona_{part}_a"), getattr(kron_qkv, f"krona_{part}_b"))
        torch.testing.assert_close(kron_qkv.part_delta(part), expected_krona)
        torch.testing.assert_close(qkv.part_delta(part), expected[part])
    assert not qkv.delta_weight()[dim:2 * dim].any()

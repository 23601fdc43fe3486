"""VPT (deep and shallow) and Conv-Adapter's CNN form: prompts act only through attention, as the paper's prompt
tokens would; shapes are kept; Conv-Adapter sits beside a bottleneck's 3x3 conv and ConvNeXt's depthwise conv."""

import copy

import pytest
import torch
import torch.nn.functional as F
from test_adapters_families import run
from test_adapters_peft import CASES

from domainmona.adapters import adapter_parameter_names, inject, trainable_report
from domainmona.errors import UserError

timm = pytest.importorskip("timm")


def _prompted(model):
    return {n: m for n, m in model.named_modules() if hasattr(m, "vpt_prompts")}


def _perturb(model, seed=3):
    """Move the method's tensors off their init (prompts and alphas matter more once trained)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.mark.parametrize("family", ["mmdet-swin", "timm-swin", "monai-swin", "timm-vit"])
def test_deep_prompts_change_each_block_only_through_its_attention(family):
    """Each adapted block equals the plain block whose attention output is replaced by the prompted one:
    norms, MLP and residuals see no prompts; every output keeps its shape and does change."""
    build, forward = CASES[family]
    plain = build()
    plain.eval()
    model = inject(copy.deepcopy(plain), "vpt-deep", prompts=3)
    _perturb(model)
    model.eval()
    attentions = _prompted(model)
    blocks = {n.rpartition(".attn")[0]: model.get_submodule(n.rpartition(".attn")[0]) for n in attentions}
    seen = {}

    def keep(name, value):  # a forward hook returning None leaves the output alone
        seen[name] = value

    hooks = [m.register_forward_hook(lambda m, a, o, n=n: keep(n, o)) for n, m in attentions.items()]
    hooks += [m.register_forward_hook(lambda m, a, kw, o, n=n: keep(n, (a, kw, o)), with_kwargs=True)
              for n, m in blocks.items()]
    with torch.no_grad():
        adapted, reference = run(model, forward), run(plain, forward)
        for hook in hooks:
            hook.remove()
        assert [o.shape for o in adapted] == [o.shape for o in reference]
        assert not torch.allclose(adapted[-1], reference[-1], atol=1e-3)
        for name, block in blocks.items():
            args, kwargs, out = seen[name]
            attention = plain.get_submodule(next(n for n in attentions if n.startswith(name + ".attn")))
            hook = attention.register_forward_hook(lambda m, a, o, n=name: seen[next(
                k for k in attentions if k.startswith(n + ".attn"))])
            torch.testing.assert_close(plain.get_submodule(name)(*args, **kwargs), out, rtol=0, atol=1e-5)
            hook.remove()


def _reference_prefix_attention(attention, plain_norm, prompts, x, mask):
    """softmax over [q k_p^T s, q k^T s + B + M] times [v_p; v], written out (no SDPA)."""
    heads, (b, n, c) = attention.num_heads, x.shape
    q, k, v = attention.qkv(x).view(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    _, pk, pv = attention.qkv(plain_norm(prompts)).view(-1, 3, heads, c // heads).permute(1, 2, 0, 3)
    scores = q @ k.transpose(-2, -1) * attention.scale
    index = attention.relative_position_index[:n, :n].reshape(-1)
    scores = scores + attention.relative_position_bias_table[index].view(n, n, heads).permute(2, 0, 1)
    if mask is not None:
        windows = mask.shape[0]
        scores = (scores.view(b // windows, windows, heads, n, n) + mask[None, :, None]).view(b, heads, n, n)
    scores = torch.cat((q @ pk.transpose(-2, -1).unsqueeze(0) * attention.scale, scores), dim=-1)
    out = F.softmax(scores, dim=-1) @ torch.cat((pv.unsqueeze(0).expand(b, -1, -1, -1), v), dim=2)
    return attention.proj(out.transpose(1, 2).reshape(b, n, c))


def _monai_two_blocks():
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    return SwinUNETR(in_channels=1, out_channels=2, feature_size=12, depths=(2, 1, 1, 1), num_heads=(1, 1, 2, 2))


WINDOW_CASES = {"mmdet-swin": CASES["mmdet-swin"], "monai-swin": (_monai_two_blocks, CASES["monai-swin"][1])}


@pytest.mark.parametrize("family", list(WINDOW_CASES))
def test_window_prompts_are_extra_keys_with_zero_bias_and_mask(family):
    """A shifted window block (2D mmdet, 3D MONAI): the prompted attention is the written-out formula."""
    build, forward = WINDOW_CASES[family]
    model = inject(build(), "vpt-deep", prompts=4)
    _perturb(model)
    model.eval()
    name, attention = next((n, m) for n, m in _prompted(model).items() if ".blocks.1." in n)  # shifted
    inputs = {}
    attention.register_forward_pre_hook(lambda m, a, kw: inputs.update(x=a[0], mask=kw.get("mask")),
                                        with_kwargs=True)
    with torch.no_grad():
        run(model, forward)
        assert inputs["mask"] is not None and inputs["mask"].min() < 0
        expected = _reference_prefix_attention(attention, attention.vpt_norm, attention.vpt_prompts, **inputs)
        torch.testing.assert_close(attention(inputs["x"], mask=inputs["mask"]), expected, rtol=0, atol=1e-5)


def test_vit_deep_prompts_equal_prompt_tokens_run_through_the_plain_blocks():
    """VPT-deep as the paper states it: p tokens inserted before each block and dropped after it."""
    build, forward = CASES["timm-vit"]
    plain = build()
    model = inject(copy.deepcopy(plain), "vpt-deep", prompts=5)
    _perturb(model)
    for vit in (plain, model):
        vit.eval()
    prefix = plain.num_prefix_tokens
    for i, block in enumerate(plain.blocks):
        prompts = model.blocks[i].attn.vpt_prompts
        block.register_forward_pre_hook(lambda m, a, p=prompts: (torch.cat(
            (a[0][:, :prefix], p.expand(a[0].shape[0], -1, -1), a[0][:, prefix:]), dim=1),))
        block.register_forward_hook(lambda m, a, o: torch.cat((o[:, :prefix], o[:, prefix + 5:]), dim=1))
    with torch.no_grad():
        torch.testing.assert_close(run(model, forward)[0], run(plain, forward)[0], rtol=0, atol=1e-5)


def test_vit_shallow_prompts_are_carried_through_every_block_and_dropped_at_the_end():
    build, forward = CASES["timm-vit"]
    plain = build()
    model = inject(copy.deepcopy(plain), "vpt-shallow", prompts=6)
    assert trainable_report(model).adapter_params == 6 * 192
    _perturb(model)
    for vit in (plain, model):
        vit.eval()
    prefix, prompts = plain.num_prefix_tokens, model.norm_pre.vpt_prompts
    plain.blocks[0].register_forward_pre_hook(lambda m, a: (torch.cat(
        (a[0][:, :prefix], prompts.expand(a[0].shape[0], -1, -1), a[0][:, prefix:]), dim=1),))
    lengths = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, a, o: lengths.append(o.shape[1]))
    plain.norm.register_forward_pre_hook(lambda m, a: (torch.cat((a[0][:, :prefix], a[0][:, prefix + 6:]), dim=1),))
    with torch.no_grad():
        adapted = run(model, forward)[0]
        torch.testing.assert_close(adapted, run(plain, forward)[0], rtol=0, atol=1e-5)
    assert lengths == [prefix + 6 + 6 * 4] * len(model.blocks)  # 48 x 32 input, patch 8: 6 x 4 patches


@pytest.mark.parametrize("family", ["mmdet-swin", "monai-swin", "resnet"])
def test_vpt_shallow_is_refused_outside_plain_vits_in_one_line(family):
    with pytest.raises(UserError, match="'vpt-shallow' is defined for plain ViTs only") as error:
        inject(CASES[family][0](), "vpt-shallow")
    assert "\n" not in str(error.value)


def _bottleneck_resnet():
    torch.manual_seed(0)
    return timm.create_model("resnet14t", pretrained=False, zero_init_last=False)  # else the branches start at 0


CNN_CASES = {"resnet-bottleneck": (_bottleneck_resnet, CASES["resnet"][1]), "convnext": CASES["convnext"]}


@pytest.mark.parametrize("case", list(CNN_CASES))
def test_conv_adapter_sits_beside_the_spatial_conv_and_only_it_trains(case):
    build, forward = CNN_CASES[case]
    model = inject(build(), "conv-adapter")
    convs = [m for m in model.modules() if hasattr(m, "conv_adapter")]
    blocks = [m for m in model.modules() if type(m).__name__.startswith("Adapted")]
    assert len(convs) == len(blocks) > 0
    # ResNet: beside conv2 (3x3, its stride, ReLU); ConvNeXt: beside conv_dw (7x7)
    widths = [c.in_channels for c in convs]
    kernel = 3 if case == "resnet-bottleneck" else 7
    assert trainable_report(model).adapter_params == sum(w * kernel ** 2 + w // 8 + w * w // 8 + 2 * w for w in widths)
    conv = convs[1] if case == "resnet-bottleneck" else convs[0]
    x = torch.randn(2, conv.in_channels, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        side = conv.conv_adapter(x)
        expected = conv.conv_adapter.alpha * conv.conv_adapter.pw(conv.conv_adapter.activation(
            F.conv2d(x, conv.conv_adapter.gconv.weight, conv.conv_adapter.gconv.bias, conv.stride, conv.padding,
                     conv.dilation, conv.in_channels // 8)))
        torch.testing.assert_close(side, expected)
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding,
                                                     conv.dilation, conv.groups) + side)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        sum(o.square().mean() for o in run(model, forward)).backward()
        optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == adapter_parameter_names(model) == {n for n, p in model.named_parameters() if p.requires_grad}


def test_conv_adapter_refuses_basic_blocks_and_widths_gamma_does_not_divide():
    with pytest.raises(UserError, match="ResNet bottlenecks and ConvNeXt blocks, not BasicBlock 'layer1.0'"):
        inject(CASES["resnet"][0](), "conv-adapter")
    with pytest.raises(UserError, match="reduction=8 must divide the width 12"):
        inject(CASES["monai-swin"][0](), "conv-adapter")

"""inject() on OpenMMLab Swin (mmdet, as used by mmrotate): placement, counts, freezing, gradients."""

import copy

import pytest
import torch
from torch import nn

from domainmona.adapters import METHODS, adapter_parameter_names, apply_freeze, inject, trainable_report
from domainmona.adapters.backbones import build_backbone
from domainmona.adapters.families.host import SLOTS
from domainmona.errors import UserError

swin = pytest.importorskip("mmdet.models.backbones.swin")


def tiny_swin(**kwargs) -> nn.Module:
    """No stochastic depth: a dropped branch would leave its adapter without gradient by chance."""
    torch.manual_seed(0)
    return swin.SwinTransformer(embed_dims=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), window_size=4,
                                drop_path_rate=0.0, **kwargs)


def perturb_adapters(model: nn.Module) -> None:
    """Adapters start as identities (zero up-projections): give them weights so every one gets a gradient."""
    gen = torch.Generator().manual_seed(3)
    adapters = adapter_parameter_names(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in adapters:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def features_loss(outs) -> torch.Tensor:
    """A loss with a non-zero gradient everywhere (a plain sum of LayerNorm outputs has none)."""
    gen = torch.Generator().manual_seed(4)
    return sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs)


@pytest.mark.parametrize("name, expected, percent", [("swin-t", 1_408_128, 5.12), ("swin-b", 3_667_456, 4.23),
                                                     ("swin-l", 5_267_712, 2.70)])
def test_mona_parameter_counts_match_the_paper(name, expected, percent):
    """Counts from the issue; Swin-L's share is the official log's 2.70% (Swin-B ~4.2%, Swin-T ~5.1%)."""
    counts = trainable_report(inject(build_backbone(name), "mona"))
    assert counts.trainable_backbone_params == counts.adapter_params == expected
    assert counts.model_params == counts.backbone_params + expected
    assert round(counts.percent_of_backbone, 2) == percent


def _expected_trainable(method: str, model: nn.Module) -> set[str]:
    names = [n for n, _ in model.named_parameters()]
    owners = {n: model.get_submodule(n.rpartition(".")[0]) for n in names}
    adapters = adapter_parameter_names(model)
    rules = {
        "full": lambda n: True,
        "fixed": lambda n: False,
        "bitfit": lambda n: n.endswith(".bias"),
        "normtuning": lambda n: isinstance(owners[n], nn.LayerNorm) and n not in adapters,
        "partial-1": lambda n: n.startswith("stages.3.blocks.0."),
    }
    rule = rules.get(method, lambda n: False)
    return {n for n in names if rule(n) or n in adapters}


@pytest.mark.parametrize("method", [m for m in METHODS if m != "vpt-shallow"])  # ViT only: test_adapters_prompts
def test_gradients_reach_exactly_the_trainable_tensors(method):
    model = inject(tiny_swin(), method)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == _expected_trainable(method, model)
    if not trainable:
        return
    perturb_adapters(model)
    model.train()
    features_loss(model(torch.randn(1, 3, 32, 32))).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == trainable


@pytest.mark.parametrize("method, slots", [("adapter", {"attn_branch", "mlp_branch"}), ("lora", set()),
                                           ("adaptformer", {"mlp_parallel"}), ("lorand", {"attn_branch", "mlp_branch"}),
                                           ("mona", {"post_attn", "post_mlp"})])
def test_methods_add_modules_in_every_block(method, slots):
    model = inject(tiny_swin(), method)
    blocks = [m for m in model.modules() if isinstance(m, swin.SwinBlock)]
    assert len(blocks) == 5
    for block in blocks:
        assert set(block._modules) & set(SLOTS) == slots
        assert hasattr(block.attn.w_msa.qkv, "lora_v_up") == (method == "lora")


def test_block_places_mona_after_each_residual_add():
    """The rewired block equals the paper's formula computed by hand from the block's own parts."""
    model = inject(tiny_swin(), "mona")
    model.eval()  # mmdet's SwinTransformer.train() returns None, so no chaining
    perturb_adapters(model)
    block = model.stages[0].blocks[0]
    x = torch.randn(2, 16 * 16, 32)
    with torch.no_grad():
        h = block.post_attn(x + block.attn(block.norm1(x), (16, 16)), (16, 16))
        expected = block.post_mlp(h + block.ffn.layers(block.norm2(h)), (16, 16))
        torch.testing.assert_close(block(x, (16, 16)), expected)


def test_injecting_nothing_keeps_the_original_outputs():
    plain = tiny_swin()
    plain.eval()
    adapted = inject(copy.deepcopy(plain), "fixed")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(plain(x), adapted(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_with_cp_keeps_adapters_inside_the_checkpoint_and_gives_the_same_gradients():
    grads = []
    for with_cp in (False, True):
        model = inject(tiny_swin(with_cp=with_cp), "mona")
        perturb_adapters(model)
        features_loss(model(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5)))).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_checkpointed_block_recomputes_the_adapters_in_backward(monkeypatch):
    model = inject(tiny_swin(with_cp=True), "mona")
    calls = []
    mona = model.stages[0].blocks[0].post_attn
    original = type(mona).forward
    monkeypatch.setattr(type(mona), "forward", lambda self, *a, **k: calls.append(self) or original(self, *a, **k))
    features_loss(model(torch.randn(1, 3, 64, 64))).backward()
    assert sum(c is mona for c in calls) == 2  # forward, then again during backward (recomputation)


def test_freezing_survives_train_and_is_reapplied_after_init_weights():
    model = inject(tiny_swin(), "mona")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    model.eval()
    model.train()
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
    model.init_weights()
    model.requires_grad_(True)  # e.g. a framework hook unfreezing everything
    apply_freeze(model)
    apply_freeze(model)
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen


def test_neck_and_head_outside_the_backbone_stay_trainable():
    detector = nn.ModuleDict({"backbone": tiny_swin(), "neck": nn.Conv2d(256, 8, 1)})
    inject(detector, "mona")
    assert all(p.requires_grad for p in detector["neck"].parameters())
    assert not detector["backbone"].patch_embed.projection.weight.requires_grad
    counts = trainable_report(detector)
    assert counts.trainable_model_params == counts.adapter_params + sum(p.numel() for p in detector["neck"].parameters())


def test_adapted_model_can_change_device_and_dtype():
    model = inject(tiny_swin(), "mona").to(torch.float64)
    assert model.stages[0].blocks[0].post_attn.gamma.dtype == torch.float64
    assert model(torch.randn(1, 3, 64, 64, dtype=torch.float64))[0].dtype == torch.float64


def test_bad_requests_are_one_line_user_errors():
    with pytest.raises(UserError, match="unknown adapter method 'monaa'"):
        inject(tiny_swin(), "monaa")
    with pytest.raises(UserError, match="has no option 'rnk'"):
        inject(tiny_swin(), "lora", rnk=8)
    with pytest.raises(UserError, match="is not a int"):
        inject(tiny_swin(), "lora", rank="eight")
    model = inject(tiny_swin(), "mona")
    with pytest.raises(UserError, match="already has 'mona' adapters"):
        inject(model, "lora")
    with pytest.raises(UserError, match="no supported blocks"):
        inject(nn.Sequential(nn.Linear(3, 3)), "mona")


def test_cli_options_arrive_as_strings_and_are_converted():
    model = inject(tiny_swin(), "lora", rank="4", alpha="8")
    qkv = model.stages[0].blocks[0].attn.w_msa.qkv
    assert qkv.lora_q_down.shape == (4, 32) and qkv.lora_scale == 2.0

"""merge / prepare_for_inference: reparametrising methods fold into the frozen weights exactly and leave a plain
backbone; Monas are fused; methods with modules of their own stay."""

import copy

import pytest
import torch
from test_adapters_families import run
from test_adapters_peft import CASES, FAMILIES, SMALL_OPTIONS

from domainmona.adapters import Mona, adapter_parameter_names, inject, merge, prepare_for_inference, save_adapter
from domainmona.adapters.inject import STATE_ATTR
from domainmona.errors import UserError

MERGEABLE = ("lora", "ssf", "fact-tt", "fact-tk", "krona", "kadaptation")
TOLERANCE = 1e-5  # fp32; the largest difference measured on these models is about 3e-6


def _perturbed(family, method):
    """A freshly built model, and the same with `method` injected and its tensors moved off their init."""
    build, _ = CASES[family]
    plain = build()
    plain.eval()
    model = inject(copy.deepcopy(plain), method, **SMALL_OPTIONS.get(method, {}))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    model.eval()
    return plain, model


def _layout(model):
    return [(n, type(m)) for n, m in model.named_modules()], [(n, p.shape) for n, p in model.named_parameters()]


@pytest.mark.parametrize("method", [*MERGEABLE, "bitfit", "normtuning"])
@pytest.mark.parametrize("family", [*FAMILIES, "smp-tu-swin"])
def test_merged_model_computes_the_adapted_one_and_is_a_plain_backbone(method, family, tmp_path):
    plain, model = _perturbed(family, method)
    forward = CASES[family][1]
    with torch.no_grad():
        adapted = run(model, forward)
        merged = run(merge(model), forward)
        reference = run(plain, forward)
    for a, b in zip(adapted, merged):
        torch.testing.assert_close(b, a, rtol=0, atol=TOLERANCE)
    assert not torch.allclose(adapted[-1], reference[-1], atol=1e-3)  # the method did change the outputs
    assert _layout(model) == _layout(plain)
    assert getattr(model, STATE_ATTR, None) is None and not any(hasattr(m, STATE_ATTR) for m in model.modules())
    with pytest.raises(UserError, match="no adapters"):
        save_adapter(model, tmp_path / "merged.safetensors")


def test_methods_with_modules_of_their_own_stay_and_mona_is_fused():
    _, model = _perturbed("timm-swin", "mona")
    forward = CASES["timm-swin"][1]
    with torch.no_grad():
        before = run(model, forward)
        after = run(prepare_for_inference(model), forward)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=TOLERANCE)
    monas = [m for m in model.modules() if isinstance(m, Mona)]
    assert monas and all(m.is_fused for m in monas)
    assert getattr(model, STATE_ATTR).method == "mona"


def test_frozen_batchnorms_of_a_merged_cnn_still_run():
    """A CNN's frozen-BatchNorm hook reads the adapter record, which merging removes."""
    build, forward = CASES["resnet"]
    model = merge(inject(build(), "bitfit"))
    model.train()
    run(model, forward)
    assert getattr(model, STATE_ATTR, None) is None


@pytest.mark.parametrize("method", ["vpt-deep", "convpass", "conv-adapter"])
def test_methods_that_do_not_fold_keep_their_tensors_and_record(method):
    """Prompts and conv bypasses have no slot-free form: merging leaves them, and the adapter record, in place."""
    _, model = _perturbed("timm-swin", method)
    forward = CASES["timm-swin"][1]
    names = adapter_parameter_names(model)
    with torch.no_grad():
        before = run(model, forward)
        after = run(prepare_for_inference(model), forward)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
    assert getattr(model, STATE_ATTR).method == method
    assert names and adapter_parameter_names(model) == names <= {n for n, _ in model.named_parameters()}

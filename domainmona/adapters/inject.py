"""`inject(model, method, **cfg)`: add a method's adapters to a backbone and freeze what it does not train."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from domainmona import __version__
from domainmona.adapters.families import find_backbone, find_sites, rewire
from domainmona.adapters.families.host import SLOTS
from domainmona.adapters.methods import get_method
from domainmona.adapters.modules.recompute import configure_recompute
from domainmona.errors import UserError

STATE_ATTR = "domainmona_adapter"


@dataclass(frozen=True)
class AdapterState:
    """What was injected into a backbone; stored on it so freezing can be re-applied and checkpoints checked."""

    method: str
    config: dict[str, Any]
    family: str
    version: str = __version__
    recompute: bool = True  # adapters recompute their internals in backward (not part of adapter files)
    parameters: tuple[str, ...] = ()  # what injection added, relative to the backbone (adapter_parameter_names)


def inject(model: nn.Module, method: str, recompute_adapters: bool = True, **config: Any) -> nn.Module:
    """Add `method`'s adapters to every block of the backbone in `model` (the model itself when it is a
    backbone) and freeze that backbone except what the method trains; modules outside it (necks, heads,
    decoders) are left trainable. With `recompute_adapters` (the default) adapters keep only their input for
    backward in training (see `set_adapter_recompute`). Returns `model`."""
    meth = get_method(method)
    cfg = meth.make_config(**config)
    _, root, family = find_backbone(model)
    if getattr(root, STATE_ATTR, None) is not None:
        raise UserError(f"{type(root).__name__} already has '{getattr(root, STATE_ATTR).method}' adapters; "
                        f"build a fresh model to inject another method")
    sites = find_sites(root, family)
    base = {id(p) for p in root.parameters()}
    for site in sites:
        rewire(site)
        meth.attach(site, cfg)
        _match_block_placement(site.block, base)
    meth.attach_model(root, sites, cfg)
    family.prepare(root, sites)
    added = tuple(n for n, p in root.named_parameters() if id(p) not in base)
    setattr(root, STATE_ATTR, AdapterState(meth.name, dataclasses.asdict(cfg), family.name,
                                           recompute=bool(recompute_adapters), parameters=added))
    block_checkpointed = family.checkpointing(root, None) if family.checkpointing else False
    configure_recompute(root, recompute=bool(recompute_adapters), inside_checkpoint=block_checkpointed)
    if any(isinstance(m, _BatchNorm) for m in root.modules()):
        root.register_forward_pre_hook(_keep_frozen_batchnorm_eval)
    apply_freeze(model)
    return model


def _match_block_placement(block: nn.Module, base: set[int]) -> None:
    """New adapters live on the device and in the floating dtype of the block's own weights (ids in `base`)."""
    ref = next((p for p in block.parameters() if id(p) in base), None)
    if ref is None:
        return
    for slot in SLOTS:
        adapter = block._modules.get(slot)
        if adapter is not None:
            adapter.to(device=ref.device, dtype=ref.dtype)


def adapted_backbones(model: nn.Module) -> list[tuple[str, nn.Module, AdapterState]]:
    """(path, module, state) of every backbone inside `model` that went through `inject`."""
    return [(n, m, getattr(m, STATE_ATTR)) for n, m in model.named_modules() if getattr(m, STATE_ATTR, None)]


def adapter_parameter_names(model: nn.Module) -> set[str]:
    """Paths in `model` of every tensor that injection added to its adapted backbones (recorded by `inject`)."""
    return {f"{prefix}.{n}" if prefix else n for prefix, _, state in adapted_backbones(model) for n in state.parameters}


def is_adapter_parameter(path: str) -> bool:
    """Parameters of adapter slots and LoRA factors, judged by name (kept for scripts and tests); the library
    itself uses `adapter_parameter_names`, every method's tensors as recorded at injection."""
    parts = path.split(".")
    return any(p in SLOTS for p in parts) or parts[-1].startswith("lora_")


def method_parameter_names(model: nn.Module) -> set[str]:
    """Paths in `model` of every parameter its adapted backbones' methods train: the tensors injection added
    (recorded) and the base weights the method's `trains_base` picks (BitFit's biases, Partial's last block...)."""
    return {f"{prefix}.{path}" if prefix else path
            for prefix, root, state in adapted_backbones(model) for path, _ in _method_parameters(root, state)}


def _method_parameters(root: nn.Module, state: AdapterState):
    """(path, parameter) pairs of one adapted backbone, each with whether its method trains it."""
    meth = get_method(state.method)
    cfg = meth.Config(**state.config)
    _, _, family = find_backbone(root)
    sites = find_sites(root, family)
    added = set(state.parameters)
    for owner_name, owner in root.named_modules():
        for name, param in owner.named_parameters(recurse=False):
            path = f"{owner_name}.{name}" if owner_name else name
            if path in added or meth.trains_base(path, owner, sites, cfg):
                yield path, param


def apply_freeze(model: nn.Module) -> None:
    """(Re-)apply each adapted backbone's freezing; idempotent. Call it again after anything that may have
    reset `requires_grad` (e.g. a framework's `init_weights` or pretrained loading)."""
    for _, root, state in adapted_backbones(model):
        root.requires_grad_(False)
        for _, param in _method_parameters(root, state):
            param.requires_grad_(True)


def _keep_frozen_batchnorm_eval(root: nn.Module, args) -> None:
    """Frozen BatchNorms keep their running statistics: `model.train()` must not start updating them."""
    state = getattr(root, STATE_ATTR, None)
    if state is None or state.method == "full":  # merged back into a plain backbone, or training everything
        return
    for module in root.modules():
        if isinstance(module, _BatchNorm) and module.training and not any(p.requires_grad
                                                                          for p in module.parameters()):
            module.eval()

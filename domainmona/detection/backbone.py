"""Detection backbones with any domainmona adapter method, registered in mmrotate's MODELS.

`MonaBackbone` takes any registered 2D backbone by name (domainmona.adapters.backbones: CNN stages, ViTs through
the simple feature pyramid or a side network, `timm:NAME`); `MonaSwinTransformer` is mmdet's Swin itself, so Swin checkpoints keep
mmdet's key layout. A config selects one by type and picks the method with one field:
`adapter=dict(type='mona', ...)`. Importing this module registers both (configs do so through `custom_imports`).
"""

from __future__ import annotations

from mmdet.models.backbones import SwinTransformer
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmrotate.registry import MODELS
from torch import nn

from domainmona.adapters import apply_freeze, inject, set_block_checkpointing
from domainmona.adapters.backbones import build_backbone, sided
from domainmona.adapters.backbones.features import train_whole, trained_whole
from domainmona.adapters.families import find_backbone


class _Adapted:
    """What both backbones share: injection right after construction (so the optimizer and DDP see the
    adapters), pretrained loading in `init_weights` (which mmengine's Runner calls after building the model),
    what trains whole beside the method (`trained_whole`: a ViT's pyramid or side network, an input convolution
    on other than 3 bands), and the base weights without adapters."""

    def _adapt(self, module: nn.Module, adapter: dict | None, weights: str | None) -> None:
        adapter_cfg = dict(adapter or dict(type='mona'))
        self.adapter_method = adapter_cfg.pop('type')
        self.weights = weights
        base_names = {name for name, _ in self.named_parameters()}
        inject(module, self.adapter_method, **adapter_cfg)
        self._adapter_names = {name for name, _ in self.named_parameters()} - base_names
        train_whole(self)  # before mmengine builds the optimizer from requires_grad

    def _load_weights(self, module: nn.Module) -> None:
        """Pretrained weights in any layout the backbone loads; with other than 3 bands the RGB filters of
        the input convolution are inflated (domainmona.adapters.bands)."""
        from domainmona.adapters.pretrained import load_pretrained

        from mmengine.dist import is_main_process

        from domainmona.console import err_console

        report = load_pretrained(module, self.weights)
        MMLogger.get_current_instance().info(f'{type(self).__name__}: {report}')
        if is_main_process():  # the counts on the terminal too: the framework log is out of sight
            err_console.print(f'backbone weights: {report}', highlight=False, soft_wrap=True)

    def modules_to_save(self) -> list[str]:
        """Modules that train whole, outside the adapter method (`trained_whole`)."""
        return trained_whole(self)

    def base_state(self) -> dict:
        """The adapted backbone's own weights without adapters, named as in its pretrained files (for mmdet's
        Swin, OpenMMLab's layout), e.g. to save as a weights file."""
        path, root, _ = find_backbone(self)
        if type(root).__name__ == 'FeatureGetterNet':  # timm's wrapper of a ViT: the ViT's own names
            path = f'{path}.model'
        prefix = f'{path}.' if path else ''
        return {k[len(prefix):]: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                if k.startswith(prefix) and k not in self._adapter_names}


@MODELS.register_module()
class MonaSwinTransformer(_Adapted, SwinTransformer):
    """mmdet's Swin with adapters. `weights` is a local pretrained Swin file (Microsoft, timm or OpenMMLab
    layout). Only what the adapter method leaves trainable trains; the neck and heads train fully."""

    def __init__(self, adapter: dict | None = None, weights: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._adapt(self, adapter, weights)

    def init_weights(self) -> None:
        if self.weights:
            self._load_weights(self)
        else:
            # Swin's from-scratch init would also redraw the adapters' own (often zero) init: keep those.
            adapter_state = {n: p.detach().clone() for n, p in self.named_parameters() if n in self._adapter_names}
            super().init_weights()
            params = dict(self.named_parameters())
            for name, value in adapter_state.items():
                params[name].data.copy_(value)
        apply_freeze(self)  # weight loading must not leave the backbone unfrozen
        train_whole(self)


@MODELS.register_module()
class MonaBackbone(_Adapted, BaseModule):
    """Any registered 2D backbone (`backbone`: its name) with adapters; gives its four feature maps (strides 4
    to 32, channels as registered) to the FPN. `with_cp` switches the family's block checkpointing."""

    def __init__(self, backbone: str, adapter: dict | None = None, weights: str | None = None,
                 in_channels: int = 3, with_cp: bool = False, side: str | None = None,
                 side_cfg: dict | None = None, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.body = build_backbone(backbone, in_chans=in_channels, **sided(side, side_cfg))
        self._adapt(self.body, adapter, weights)
        if with_cp:
            set_block_checkpointing(self.body)

    def init_weights(self) -> None:
        """Built with timm's own initialisation (seeded by the Runner); pretrained weights over it."""
        if self.weights:
            self._load_weights(self.body)
        apply_freeze(self.body)
        train_whole(self)

    def forward(self, x):
        return tuple(self.body(x))

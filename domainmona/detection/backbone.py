"""MonaSwinTransformer: mmdet's Swin with any domainmona adapter method, registered in mmrotate's MODELS.

A config selects it by type and picks the method with one field: `adapter=dict(type='mona', ...)`.
Importing this module registers it (configs do so through `custom_imports`).
"""

from __future__ import annotations

from mmdet.models.backbones import SwinTransformer
from mmengine.logging import MMLogger
from mmrotate.registry import MODELS

from domainmona.adapters import apply_freeze, inject


@MODELS.register_module()
class MonaSwinTransformer(SwinTransformer):
    """Swin with adapters injected right after construction, so the optimizer and DDP see them.

    `weights` is a local ImageNet-pretrained Swin file (official Microsoft, timm or OpenMMLab format),
    loaded in `init_weights` (which mmengine's Runner calls after building the model). Only the
    parameters the adapter method leaves trainable train; the neck and heads are outside this module
    and train fully. With other than 3 input bands the RGB patch embedding is inflated
    (domainmona.geo.bands) and trains.
    """

    def __init__(self, adapter: dict | None = None, weights: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        adapter_cfg = dict(adapter or dict(type='mona'))
        self.adapter_method = adapter_cfg.pop('type')
        self.weights = weights
        base_names = {name for name, _ in self.named_parameters()}
        inject(self, self.adapter_method, **adapter_cfg)
        self._adapter_names = {name for name, _ in self.named_parameters()} - base_names
        self._train_patch_embedding_for_other_bands()  # before mmengine builds the optimizer from requires_grad

    def init_weights(self) -> None:
        logger = MMLogger.get_current_instance()
        if self.weights:
            from domainmona.adapters.pretrained import load_pretrained
            from domainmona.geo.bands import inflate_patch_embedding

            report = load_pretrained(self, self.weights)
            logger.info(f'MonaSwinTransformer: {report}')
            if inflate_patch_embedding(self.patch_embed.projection, self.weights):
                logger.info(f'MonaSwinTransformer: RGB patch embedding inflated to '
                            f'{self.patch_embed.projection.in_channels} bands')
        else:
            # Swin's from-scratch init would also redraw the adapters' own (often zero) init: keep those.
            adapter_state = {n: p.detach().clone() for n, p in self.named_parameters() if n in self._adapter_names}
            super().init_weights()
            params = dict(self.named_parameters())
            for name, value in adapter_state.items():
                params[name].data.copy_(value)
        apply_freeze(self)  # weight loading must not leave the backbone unfrozen
        self._train_patch_embedding_for_other_bands()

    def _train_patch_embedding_for_other_bands(self) -> None:
        if self.patch_embed.projection.in_channels != 3:  # no pretrained filter fits other bands
            self.patch_embed.requires_grad_(True)

    def base_state(self) -> dict:
        """The backbone's own weights without adapters (OpenMMLab Swin layout), e.g. to save as a weights file."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                if k not in self._adapter_names}

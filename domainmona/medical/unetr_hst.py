"""MONAI UNETR whose ViT runs with HST (domainmona.adapters.side.hst) beside it.

The 3D analogue of HST is not defined by the paper (SIDE-NETWORKS.md A.5(c)); this is the spec's suggested
analogue. The ViT runs block by block through the host protocol with HST's meta tokens, and UNETR decodes its
hidden states after blocks 3, 6, 9 and the last, as usual. HST's three side stages (strides 4, 8, 16; UNETR has
no stride-32 level, so no fourth stage is built and the ViT's blocks are shared in thirds: ends (3, 7, 11)) are
added, each through a 1x1x1 convolution, to UNETR's stride-4 skip (encoder3), stride-8 skip (encoder4) and the
stride-16 bottleneck decoder5 takes. The convolutions start at zero, so the decoder starts from UNETR's own
skips: at step 0 the output differs from UNETR's only by the meta tokens' effect on the ViT, and the side
stages start learning once the projections have moved off zero (their gradient is zero until then).

UNETR's submodules keep their names (`vit`, `encoder1..4`, `decoder2..5`, `out`), so a UNETR state dict loads
by name (only `hst.*` and `hst_skips.*` stay missing). What trains: `hst`, `hst_skips`, the decoder you choose
to train, and the ViT norms named by `tuned_norm_names`; freezing the ViT is left to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import UNETR
from torch import nn

from domainmona.adapters.side.host import host_vit
from domainmona.adapters.side.hst import HST, preset
from domainmona.errors import UserError

# UNETR's ViT hidden states its decoder reads (0-based blocks); the final one (after `vit.norm`) comes last
_UNETR_TAPS = (3, 6, 9)


class UNETRWithHST(UNETR):
    """UNETR's arguments, plus `hst_preset` (its first three stage widths and heads) and HST keyword arguments
    (`stage_dims`/`stage_heads` of three stages, `stage_ends`, `n_meta`, `project_first`, `norm`) that override
    it. The side stem takes the image's `in_channels`."""

    def __init__(self, in_channels: int, out_channels: int, img_size: Sequence[int] | int, feature_size: int = 16,
                 hidden_size: int = 768, mlp_dim: int = 3072, num_heads: int = 12, proj_type: str = "conv",
                 norm_name: tuple | str = "instance", conv_block: bool = True, res_block: bool = True,
                 dropout_rate: float = 0.0, spatial_dims: int = 3, qkv_bias: bool = False, save_attn: bool = False,
                 hst_preset: str = "cls", **hst_options):
        super().__init__(in_channels, out_channels, img_size, feature_size=feature_size, hidden_size=hidden_size,
                         mlp_dim=mlp_dim, num_heads=num_heads, proj_type=proj_type, norm_name=norm_name,
                         conv_block=conv_block, res_block=res_block, dropout_rate=dropout_rate,
                         spatial_dims=spatial_dims, qkv_bias=qkv_bias, save_attn=save_attn)
        widths = preset(hst_preset)
        options = {"stage_dims": widths["stage_dims"][:3], "stage_heads": widths["stage_heads"][:3], **hst_options}
        if len(options["stage_dims"]) != 3:
            raise UserError(f"unetr-hst: UNETR takes HST's stride 4, 8 and 16 stages: give 3 stage_dims, not "
                            f"{len(options['stage_dims'])}")
        self.hst = HST(host_vit(self.vit), in_chans=in_channels, **options)
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        targets = (feature_size * 4, feature_size * 8, hidden_size)  # encoder3, encoder4, decoder5's bottleneck
        self.hst_skips = nn.ModuleList(conv(c, t, 1) for c, t in zip(self.hst.out_channels, targets))
        for p in self.hst_skips.parameters():
            nn.init.zeros_(p)

    def tuned_norm_names(self) -> list[str]:
        """State-dict names of the ViT LayerNorm parameters HST tunes: unfreeze and save them with `hst` and
        `hst_skips`."""
        return [f"vit.{name}" for name in HST.tuned_norm_paths(host_vit(self.vit))]

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        host = host_vit(self.vit)
        maps, hidden = self.hst.run(x_in, host, taps=(*_UNETR_TAPS, host.depth - 1))
        x2, x3, x4, last = hidden
        skip3, skip4, bottleneck = (project(m) for project, m in zip(self.hst_skips, maps))
        enc1 = self.encoder1(x_in)
        enc2 = self.encoder2(self.proj_feat(x2))
        enc3 = self.encoder3(self.proj_feat(x3)) + skip3
        enc4 = self.encoder4(self.proj_feat(x4)) + skip4
        dec4 = self.proj_feat(self.vit.norm(last)) + bottleneck
        dec3 = self.decoder5(dec4, enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        return self.out(self.decoder2(dec1, enc1))

"""Visual prompts (VPT, Jia et al. ECCV 2022) on frozen attention layers.

A deep prompt's output is thrown away at the next block, so VPT-deep is exactly a per-block attention prefix:
every query also attends to p extra keys W_k LN1(P) and values W_v LN1(P), in every (shifted) window; the
relative-position bias and the shift mask get zeros for the prompt keys. The token stream keeps its shape, so
dense heads and 3D windows work unchanged. VPT-shallow carries its prompts through a plain ViT's blocks as
extra tokens behind the class/register tokens and drops them at the final norm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from domainmona.adapters.modules.delta import new_parameter, refer, swap_class


def new_prompts(count: int, dim: int, patch_fan_in: int, like: torch.Tensor) -> nn.Parameter:
    """(count x dim) prompts, uniform in +-sqrt(6 / (patch fan-in + dim)) (the paper's Xavier-style bound, fan-in
    3 * patch^2 for RGB)."""
    bound = math.sqrt(6.0 / (patch_fan_in + dim))
    return nn.init.uniform_(new_parameter((count, dim), like), -bound, bound)


class PromptedAttention:
    """Swapped-in mixin for a window attention (mmdet WindowMSA, timm and MONAI WindowAttention) or a timm ViT
    Attention: the attention recomputed with the block's prompts as a key/value prefix (one forward for all
    four; they share qkv, proj, scale and the relative-position table layout)."""

    vpt_prompts: nn.Parameter

    @classmethod
    def convert(cls, attention: nn.Module, norm: nn.Module, count: int, patch_fan_in: int) -> nn.Module:
        qkv = attention.qkv
        swap_class(attention, cls)
        refer(attention, "vpt_norm", norm)
        attention.vpt_prompts = new_prompts(count, qkv.in_features, patch_fan_in, qkv.weight)
        return attention

    def _prompt_keys_values(self, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(heads, p, head_dim) keys and values of the normed prompts."""
        count = self.vpt_prompts.shape[0]
        kv = self.qkv(self.vpt_norm(self.vpt_prompts)).view(count, 3, heads, -1)[:, 1:]
        return kv.permute(1, 2, 0, 3).unbind(0)

    def _bias(self, n: int, mask: torch.Tensor | None, batch: int, heads: int, dtype) -> torch.Tensor | None:
        """Additive scores (batch or 1, heads, n, p + n): relative-position bias and window mask, zero for prompts."""
        count = self.vpt_prompts.shape[0]
        table = getattr(self, "relative_position_bias_table", None)
        if table is None and mask is None:
            return None
        bias = torch.zeros(1, heads, n, count + n, dtype=dtype, device=self.vpt_prompts.device)
        if table is not None:
            index = self.relative_position_index[:n, :n].reshape(-1)
            bias[..., count:] = table[index].view(n, n, heads).permute(2, 0, 1).to(dtype)
        if mask is not None:  # (windows, n, n) for window attention; a timm attention mask broadcasts over heads
            if mask.dim() == 3 and table is not None:
                windows = mask.shape[0]
                bias = (bias.unsqueeze(1) + F.pad(mask, (count, 0)).unsqueeze(1).unsqueeze(0).to(dtype))
                return bias.expand(batch // windows, -1, -1, -1, -1).reshape(batch, heads, n, count + n)
            bias = bias + F.pad(mask.to(dtype), (count, 0))
        return bias

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if is_causal or (attn_mask is not None and attn_mask.dtype == torch.bool):
            raise ValueError("prompted attention takes additive float masks only (no causal or boolean masks)")
        batch, n, _ = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).view(batch, n, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        pk, pv = self._prompt_keys_values(heads)
        k = torch.cat((pk.expand(batch, -1, -1, -1), k), dim=2)
        v = torch.cat((pv.expand(batch, -1, -1, -1), v), dim=2)
        q, k = self._optional("q_norm", q), self._optional("k_norm", k)
        bias = self._bias(n, mask if mask is not None else attn_mask, batch, heads, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale,
                                             dropout_p=self.attn_drop.p if self.training else 0.0)
        out = self._optional("norm", out.transpose(1, 2).reshape(batch, n, -1))
        gate = getattr(self, "gate", None)
        if gate is not None:
            out = out * gate(x).sigmoid()
        return self.proj_drop(self.proj(out))

    def _optional(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """`t` through a timm ViT Attention's optional q/k/output norm (unchanged where the layer has none)."""
        norm = getattr(self, name, None)
        return t if norm is None else norm(t)


class PrependPrompts:
    """Swapped-in mixin for a timm ViT's `norm_pre`: VPT-shallow's prompts inserted behind the prefix tokens."""

    vpt_prompts: nn.Parameter
    vpt_position: int

    @classmethod
    def convert(cls, norm_pre: nn.Module, position: int, prompts: nn.Parameter) -> nn.Module:
        swap_class(norm_pre, cls)
        norm_pre.vpt_prompts, norm_pre.vpt_position = prompts, position
        return norm_pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        at = self.vpt_position
        prompts = self.vpt_prompts.to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat((x[:, :at], prompts, x[:, at:]), dim=1)


class DropPrompts:
    """Swapped-in mixin for a timm ViT's final `norm`: the carried prompts leave the token stream."""

    vpt_position: int
    vpt_count: int

    @classmethod
    def convert(cls, norm: nn.Module, position: int, count: int) -> nn.Module:
        swap_class(norm, cls)
        norm.vpt_position, norm.vpt_count = position, count
        return norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        at = self.vpt_position
        return super().forward(torch.cat((x[:, :at], x[:, at + self.vpt_count:]), dim=1))

"""Adapter slots of a residual block and how each residual branch joins the stream through them.

Rewired blocks (see `families`) call `join_attention` / `join_mlp` / `join_block` where the original block
added its residual branches; a slot left empty is skipped, so a rewired block without adapters computes
exactly what the original did. Adapters see tokens (B, N, C) plus the spatial shape of the N tokens.
"""

from __future__ import annotations

import torch

# Slot names are part of the checkpoint key layout: changing them breaks saved adapters.
ATTN_BRANCH = "attn_branch"  # on the attention branch, before its residual add (Houlsby adapter, LoRand)
ATTN_PARALLEL = "attn_parallel"  # beside the attention, fed the pre-norm stream (Convpass, Conv-Adapter)
POST_ATTN = "post_attn"  # after the attention residual add (Mona 1)
MLP_BRANCH = "mlp_branch"  # on the MLP branch, before its residual add
MLP_PARALLEL = "mlp_parallel"  # beside the MLP, fed the pre-norm stream (AdaptFormer)
POST_MLP = "post_mlp"  # after the MLP residual add (Mona 2)
POST_BLOCK = "post_block"  # after a CNN block's output
SLOTS = (ATTN_BRANCH, ATTN_PARALLEL, POST_ATTN, MLP_BRANCH, MLP_PARALLEL, POST_MLP, POST_BLOCK)


class AdapterHost:
    """Mixin placed before the original block class; provides the joins used by rewired forwards."""

    def _through_slot(self, slot: str, x: torch.Tensor, shape, prefix: int) -> torch.Tensor:
        adapter = self._modules.get(slot)
        return x if adapter is None else adapter(x, shape, num_prefix_tokens=prefix)

    def join_attention(self, stream: torch.Tensor, branch: torch.Tensor, shape, prefix: int = 0) -> torch.Tensor:
        x = stream + self._through_slot(ATTN_BRANCH, branch, shape, prefix)
        parallel = self._modules.get(ATTN_PARALLEL)
        if parallel is not None:
            x = x + parallel(stream, shape, num_prefix_tokens=prefix)
        return self._through_slot(POST_ATTN, x, shape, prefix)

    def join_mlp(self, stream: torch.Tensor, branch: torch.Tensor, shape, prefix: int = 0) -> torch.Tensor:
        x = stream + self._through_slot(MLP_BRANCH, branch, shape, prefix)
        parallel = self._modules.get(MLP_PARALLEL)
        if parallel is not None:
            x = x + parallel(stream, shape, num_prefix_tokens=prefix)
        return self._through_slot(POST_MLP, x, shape, prefix)

    def mlp_adds_its_residual(self, stream: torch.Tensor, shape, prefix: int = 0) -> torch.Tensor:
        """For an MLP whose output already includes the residual (mmcv's FFN with `identity`): only the
        post-MLP adapter remains, one pass over the stream fewer than `join_mlp` on a bare branch."""
        return self._through_slot(POST_MLP, stream, shape, prefix)

    @property
    def wants_bare_mlp_branch(self) -> bool:
        """An adapter sits on the MLP branch or beside the MLP, so the branch must come without the residual."""
        return self._modules.get(MLP_BRANCH) is not None or self._modules.get(MLP_PARALLEL) is not None

    def join_map(self, join, stream: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """`join` for channels-last maps (B, *spatial, C): joined as tokens, returned as a map."""
        batch, channels = stream.shape[0], stream.shape[-1]
        tokens = join(stream.reshape(batch, -1, channels), branch.reshape(batch, -1, channels), stream.shape[1:-1])
        return tokens.reshape(stream.shape)

    def join_block(self, out: torch.Tensor) -> torch.Tensor:
        """CNN block output (B, C, *spatial) through the post-block adapter, as tokens and back."""
        adapter = self._modules.get(POST_BLOCK)
        if adapter is None:
            return out
        batch, channels, *spatial = out.shape
        tokens = adapter(out.flatten(2).transpose(1, 2), spatial)
        return tokens.transpose(1, 2).reshape(out.shape)

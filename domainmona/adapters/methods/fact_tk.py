"""FacT-TK (Jie & Deng AAAI 2023): FacT-TT's placement with each block's Sigma slices drawn from a stage core
(r x r x r) and a factor P (r x slices), slice k = core x_3 P[:, k]; folds into the block linears."""

from domainmona.adapters.methods.base import register_method
from domainmona.adapters.methods.fact_tt import FacTTT
from domainmona.adapters.modules.fact import FacTFactors, FacTTKLinear


@register_method(order=140)
class FacTTK(FacTTT):
    name = "fact-tk"
    summary = "FacT with Tucker-shared Sigma per stage (merges)"

    def make_factors(self, dim, rank, like, slices) -> FacTFactors:
        return FacTFactors(dim, rank, like, slices)

    def convert(self, linear, factors, chunks, config, first) -> None:
        FacTTKLinear.convert(linear, factors, chunks, config.scale, config.dropout, first)

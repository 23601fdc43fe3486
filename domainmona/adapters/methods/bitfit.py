"""BitFit (Ben Zaken et al. 2022): only the bias terms of the backbone train."""

from domainmona.adapters.methods.base import Method, register_method


@register_method(order=30)
class BitFit(Method):
    name = "bitfit"
    summary = "train only bias terms"

    def trains_base(self, path, owner, sites, config) -> bool:
        return path.rsplit(".", 1)[-1] == "bias"

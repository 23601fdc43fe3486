"""Full fine-tuning: every backbone weight trains (the baseline Mona is compared against)."""

from domainmona.adapters.methods.base import Method, register_method


@register_method(order=10)
class Full(Method):
    name = "full"
    summary = "train every backbone weight"

    def trains_base(self, path, owner, sites, config) -> bool:
        return True

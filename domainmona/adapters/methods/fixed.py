"""Fixed: the backbone is frozen entirely; only necks and heads outside it train."""

from domainmona.adapters.methods.base import Method, register_method


@register_method(order=20)
class Fixed(Method):
    name = "fixed"
    summary = "freeze the whole backbone"

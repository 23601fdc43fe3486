"""Fixed: the backbone is frozen entirely; only necks and heads outside it train."""

from domainmona.adapters.methods.base import Method


class Fixed(Method):
    name = "fixed"
    summary = "freeze the whole backbone"

"""Methods that learn nothing: the plain global ranking, one keep ratio for every group, a random ranking."""

from __future__ import annotations

from lcp.methods.base import Method, register_method


@register_method
class GlobalMethod(Method):
    name = "global"
    summary = "plain global ranking of the raw scores"
    order = "global"


@register_method
class UniformMethod(Method):
    name = "uniform"
    summary = "one keep ratio for all layers"
    order = "uniform"
    removes_blocks = False  # one keep ratio above the floor: no group is emptied
    ranks_by_time = False


@register_method
class RandomMethod(Method):
    name = "random"
    summary = "seeded random ranking"
    order = "random"
    ranks_by_time = False

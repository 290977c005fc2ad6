"""Per-group keep ratios realised at aligned widths (``--round-to`` above 1), as close to the asked ratios as the
budget allows.

Scaling every ratio by one factor and rounding each width up (what ``plan_ratios`` does at any width) moves the
budget's shortfall onto every group, including those asked to stay whole, and the top-up then follows the scores,
not the ratios: an agent's action would be distorted by the rounding (``benchmarks/agent_rounding.py``). Here
each group starts at the aligned width nearest its asked ratio; while the cost is over the target, the group
furthest above its ratio loses one step; then, while a step up still fits, the group furthest below its ratio
gains one. (Weighing the steps by the cost they save was further off: it takes the costly stream groups first.)
Within a group the lowest-scored units go first, and no module loses its last channel.
"""

from __future__ import annotations

import numpy as np

from lcp.engine.cost import CostModel
from lcp.engine.graph import ChannelGraph
from lcp.errors import UnreachableBudget


def aligned_ratio_cut(
    graph: ChannelGraph,
    cost: CostModel,
    scores: np.ndarray,
    ratios: np.ndarray,
    *,
    align: np.ndarray,
    floor: np.ndarray,
    target: float,
    metric: str,
) -> np.ndarray:
    """Removed-unit mask whose group widths are multiples of ``align`` (or whole), at least ``floor``, nearest
    ``ratios`` with ``cost.value(metric) <= target``; raises :class:`UnreachableBudget` when even the floors
    are over it. Leaves ``cost`` holding the returned cut."""
    orders, sizes = [], np.array([len(g.units) for g in graph.groups], dtype=np.int64)
    for g in graph.groups:
        idx = np.asarray(g.units, dtype=np.int64)
        orders.append(idx[np.lexsort((idx, scores[idx]))])  # lowest scores first
    lowest = aligned_floor(sizes, align, floor)
    keep = nearest_widths(ratios, sizes, align, floor)
    removed = np.zeros(len(graph.units), dtype=bool)
    cost.reset()
    for g in range(len(sizes)):
        _set_width(cost, orders[g], removed, int(sizes[g]), int(keep[g]))

    def down(g: int) -> int:  # the next aligned width below keep[g], or -1
        k, a = int(keep[g]), int(align[g])
        k -= k % a or a
        return k if k >= lowest[g] else -1

    def up(g: int) -> int:
        return min(int(sizes[g]), (int(keep[g]) // int(align[g]) + 1) * int(align[g]))

    while cost.value(metric) > target:
        movable = [g for g in range(len(sizes)) if down(g) >= 0]
        if not movable:
            value = cost.value(metric) / cost.base(metric)
            cost.reset()
            raise UnreachableBudget(f"the lowest reachable is {value:.4f}", value)  # plan_ratios says more
        g = max(movable, key=lambda g: (keep[g] / sizes[g] - ratios[g], -g))
        keep[g] = _set_width(cost, orders[g], removed, int(keep[g]), down(g))
    grown = True
    while grown:  # spend what is left: a step up for the group furthest below its ratio that still fits
        grown = False
        for g in sorted(range(len(sizes)), key=lambda g: (keep[g] / sizes[g] - ratios[g], g)):
            if keep[g] == sizes[g]:
                continue
            was = int(keep[g])
            _set_width(cost, orders[g], removed, was, up(g))
            if cost.value(metric) <= target:
                keep[g], grown = up(g), True
                break
            _set_width(cost, orders[g], removed, up(g), was)
    return removed


def aligned_floor(sizes: np.ndarray, align: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Each group's narrowest allowed width: its floor rounded up to its alignment (at most its size)."""
    return np.minimum(sizes, -(-np.asarray(floor, dtype=np.int64) // align) * align)


def nearest_widths(ratios: np.ndarray, sizes: np.ndarray, align: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Each group's allowed width (a multiple of its alignment, or whole; at least its aligned floor) nearest its
    asked ratio: where ``aligned_ratio_cut`` starts."""
    asked = np.asarray(ratios) * sizes
    nearest = np.rint(asked / align).astype(np.int64) * align
    nearest = np.where(sizes - asked < np.abs(nearest - asked), sizes, nearest)  # whole, when it is nearer
    return np.clip(nearest, aligned_floor(sizes, align, floor), sizes)


def _set_width(cost: CostModel, order: np.ndarray, removed: np.ndarray, kept: int, keep: int) -> int:
    """Move one group from ``kept`` to ``keep`` units (its lowest-scored ``n - keep`` removed); returns ``keep``."""
    n = len(order)
    if keep < kept:
        for u in order[n - kept : n - keep].tolist():
            if cost.min_kept(u) >= 1:  # never a module's (or split piece's) last channel
                cost.remove(u)
                removed[u] = True
    else:
        for u in order[n - keep : n - kept].tolist():
            if removed[u]:
                cost.restore(u)
                removed[u] = False
    return keep

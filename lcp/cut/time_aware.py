"""The time-aware order of latency budgets (``--time-aware``): what each unit, and each residual branch, saves by
the latency table, and the walk's order by importance per millisecond saved (a greedy knapsack)."""

from __future__ import annotations

import numpy as np

from lcp.engine.cost import CostModel
from lcp.engine.graph import ChannelGraph


def time_gains(
    graph: ChannelGraph, cost: CostModel, floor: np.ndarray, depth: np.ndarray
) -> tuple[np.ndarray, dict[int, float]]:
    """What removing saves by the cost model's latency table: per unit, the milliseconds its group saves per
    channel removed down to its floor (NaN for units that cannot be pruned); per ``depth`` group, the
    milliseconds its whole branch takes (its layers' fixed time included)."""
    gains = np.full(len(graph.units), np.nan)
    branches: dict[int, float] = {}
    cost.reset()
    base = cost.value("latency")
    for g in graph.groups:
        units = [u for u in g.units if graph.units[u].prunable]
        take = units[: max(0, len(g.units) - int(floor[g.index]))]
        for u in take:
            cost.remove(u)
        if take:
            gains[units] = (base - cost.value("latency")) / len(take)
        if depth[g.index] and len(units) == len(g.units):
            for u in units[len(take) :]:
                cost.remove(u)
            branches[g.index] = base - cost.value("latency")
        cost.reset()
    return gains, branches


def time_aware_ranking(
    graph: ChannelGraph, units: np.ndarray, gains: np.ndarray, branches: dict[int, float] | None = None
) -> np.ndarray:
    """The walk's order by importance per millisecond saved (a greedy knapsack), from ``units``, the prunable
    units ascending by score (``ranking.ranking``): a unit's rank there (as a fraction, so the order within a
    group is the score's) over its time gain relative to the median gain; a ``branches`` group also enters
    whole, as the entry ``-(group + 1)``, at the sum of its units' ranks over the branch's time. A unit that
    saves no time comes last."""
    rank = np.empty(len(graph.units))
    rank[units] = (np.arange(len(units)) + 1.0) / len(units)
    g = gains[units]
    positive = g[np.isfinite(g) & (g > 0)]
    if positive.size == 0:
        return units
    median = float(np.median(positive))
    rel = np.where(np.isfinite(g) & (g > 0), g / median, 0.0)
    with np.errstate(divide="ignore"):
        key = np.where(rel > 0, rank[units] / np.where(rel > 0, rel, 1.0), np.inf)
    entries, keys = list(units.tolist()), list(key.tolist())
    for gi, ms in sorted((branches or {}).items()):
        if ms > 0:
            entries.append(-(gi + 1))
            keys.append(float(rank[graph.groups[gi].units].sum()) / (ms / median))
    order = np.asarray(entries, dtype=np.int64)
    return order[np.lexsort((order, np.asarray(keys)))]

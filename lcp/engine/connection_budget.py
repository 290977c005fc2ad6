"""The budget of a connection cut: the cheapest valid mask, and a mask made valid and within a budget."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from lcp.errors import UnreachableBudget

if TYPE_CHECKING:
    from lcp.engine.connections import ConnectionGraph


def minimal_mask(cg: ConnectionGraph, metric: str = "macs") -> np.ndarray:
    """The cheapest valid mask: every consumer keeps one connection, chosen by a shortest-path DP
    (exact when each consumer is on one pinned consumer's chain, as in DenseNets)."""
    k_metric = 0 if metric == "macs" else 1
    best = np.full(len(cg.consumers), np.inf)
    choice = np.full(len(cg.consumers), -1)
    for ci, c in enumerate(cg.consumers):
        unit = cg.unit_cost[ci][k_metric]
        base = cg.full_cost[ci][2 + k_metric]
        for k in c.sources:
            sc = cg.consumer_of_record.get(int(cg.src[k]))
            v = base + unit * cg.width[k] + (best[sc] if sc is not None else 0.0)
            if v < best[ci]:
                best[ci], choice[ci] = v, k
    keep = np.zeros(cg.n, dtype=bool)
    need = [ci for ci, c in enumerate(cg.consumers) if c.pinned]
    while need:
        ci = need.pop()
        k = int(choice[ci])
        if keep[k]:
            continue
        keep[k] = True
        sc = cg.consumer_of_record.get(int(cg.src[k]))
        if sc is not None:
            need.append(sc)
    # consumers made alive only through their own chain are covered; dead ones need nothing
    return keep


def project_to_budget(
    cg: ConnectionGraph,
    keep: np.ndarray,
    priority: np.ndarray,
    *,
    budget: float,
    metric: str = "macs",
    fill: bool = True,
) -> np.ndarray:
    """Make ``keep`` valid and within ``budget`` (a fraction of the baseline ``metric``).

    Drops kept connections in increasing ``priority`` until the cost fits; if that cannot reach the budget,
    starts again from :func:`minimal_mask`. With ``fill``, adds back dropped connections in decreasing priority
    while the cost stays within the budget. Raises UnreachableBudget below the minimal mask's cost.
    """
    target = budget * cg.base(metric)
    keep = np.asarray(keep, dtype=bool).copy()
    priority = np.asarray(priority, dtype=np.float64)
    low = cg.value(minimal_mask(cg, metric), metric)
    if low > target + 1e-9:
        lowest = low / cg.base(metric)
        raise UnreachableBudget(
            f"budget {budget:g} of {metric} cannot be met by removing connections: the "
            f"lowest reachable is {lowest:.4f}; "
            + (
                f"pass --budget {math.ceil(lowest * 1000) / 1000:g} or more"
                if math.ceil(lowest * 1000) < 1000
                else "almost no connection can be removed"
            ),
            lowest,
        )

    def one_each(keep: np.ndarray) -> np.ndarray:
        # every consumer keeps at least one connection (its highest-priority one), so any mask grown from
        # this by adding connections stays valid; dead consumers cost nothing for it
        for c in cg.consumers:
            if not keep[c.sources].any():
                keep[c.sources[int(np.argmax(priority[c.sources]))]] = True
        return keep

    keep = one_each(keep)
    order = np.argsort(priority, kind="stable")
    if cg.value(keep, metric) > target:
        for k in order.tolist():
            if not keep[k]:
                continue
            c = cg.consumers[int(cg.dst[k])]
            if keep[c.sources].sum() <= 1:
                continue
            keep[k] = False
            if cg.value(keep, metric) <= target:
                break
        if cg.value(keep, metric) > target:
            keep = one_each(minimal_mask(cg, metric))
            fill = True
    if fill:
        for k in order[::-1].tolist():
            if keep[k]:
                continue
            keep[k] = True
            if cg.value(keep, metric) > target:
                keep[k] = False
    cg.check(keep)
    return keep

"""A toy reward with a known optimum, to check that the connection controller learns (docs/connections.md)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lcp.engine.connections import ConnectionGraph


def match_toy(
    cg: ConnectionGraph, budget: float, seed: int = 0, *, method: str = "ads", budget_type: str = "macs"
) -> tuple[np.ndarray, Callable[[np.ndarray], dict]]:
    """A cheap reward with a known optimum, to check that the controller learns: (target, evaluate) with
    evaluate(keep) = {"acc": fraction of connections where keep equals target}; target is a seeded random mask
    projected as a sample would be (filled for ``ads``), so it is reachable (best reward 1 for ``ads``)."""
    rng = np.random.default_rng(seed)
    target = cg.project(
        rng.random(cg.n) < 0.5, rng.random(cg.n), budget=budget, metric=budget_type, fill=method == "ads"
    )
    return target, lambda keep: {"acc": float((np.asarray(keep) == target).mean())}

"""Global ranking with per-group compensation, and the greedy cut to a budget.

Each prunable unit u of group g gets the compensated score ``alpha[g] * s[u] + kappa[g]``; all units of the
network are sorted ascending in one ranking and removed from the bottom, updating the cost incrementally,
until the cost is at or below ``budget * baseline``. Floors (per group) and ``round_to`` are respected, no
module is ever left without channels, and a last pass restores the most recently removed units that still
fit, so the result lands just under the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lcp.cut.aligned_ratios import aligned_ratio_cut
from lcp.cut.alignment import group_alignment
from lcp.cut.options import check_budget
from lcp.cut.time_aware import time_aware_ranking, time_gains
from lcp.cut.transforms import Transforms
from lcp.engine.cost import CostModel
from lcp.engine.graph import ChannelGraph
from lcp.errors import LcpError, UnreachableBudget

#: orders of the greedy walk: one global ranking (``lcp``: of compensated scores), one keep ratio for every group,
#: or a seeded random ranking
ORDERS = ("lcp", "global", "uniform", "random")


@dataclass
class Plan:
    """Which units to remove, and what that costs."""

    removed: np.ndarray  # bool per unit
    macs: int
    params: int
    macs_base: int
    params_base: int
    budget: float
    budget_type: str
    method: str

    @property
    def macs_ratio(self) -> float:
        return self.macs / self.macs_base

    @property
    def params_ratio(self) -> float:
        return self.params / self.params_base

    def describe(self) -> str:
        """The cost kept, and a warning when the cut lands more than 10% under a MACs or params budget."""
        text = (
            f"MACs {self.macs / 1e6:.2f}M of {self.macs_base / 1e6:.2f}M ({self.macs_ratio:.1%}), "
            f"params {self.params / 1e6:.3f}M of {self.params_base / 1e6:.3f}M ({self.params_ratio:.1%})"
        )
        ratio = {"macs": self.macs_ratio, "params": self.params_ratio}.get(self.budget_type)
        if ratio is not None and self.budget < 1 and ratio < 0.9 * self.budget:
            text += (
                f"; {ratio:.3f} of the {self.budget_type} for a budget of {self.budget:g}: no cut lands closer in "
                "the steps these widths can take (a smaller round_to allows finer ones)"
            )
        return text


def compensated_scores(graph: ChannelGraph, scores: np.ndarray, transforms: Transforms) -> np.ndarray:
    """``alpha[g] * s + kappa[g]`` per unit (NaN for units that cannot be pruned)."""
    out = np.full(len(graph.units), np.nan)
    for g in graph.groups:
        idx = np.asarray(g.units)
        out[idx] = transforms.alpha[g.index] * scores[idx] + transforms.kappa[g.index]
    return out


def ranking(graph: ChannelGraph, scores: np.ndarray) -> np.ndarray:
    """Prunable unit indices, ascending by score (ties by unit index)."""
    units = np.asarray(graph.prunable_units, dtype=np.int64)
    return units[np.lexsort((units, scores[units]))]


class Walker:
    """Greedy removal along a ranking with floors, rounding (per group, :func:`group_alignment`) and
    module-emptiness guards."""

    def __init__(
        self, graph: ChannelGraph, cost: CostModel, *, min_ratio: float = 0.1, min_channels: int = 2, round_to: int = 1
    ):
        self.graph, self.cost = graph, cost
        self.round_to = max(1, int(round_to))
        self.size = np.array([len(g.units) for g in graph.groups], dtype=np.int64)
        self.align = group_alignment(self.size, self.round_to)
        self.min_ratio = min_ratio
        self.floor = graph.floors(min_ratio, min_channels)
        self.group_of = np.array([u.group for u in graph.units], dtype=np.int64)
        self.depth = getattr(graph, "depth", np.zeros(len(graph.groups), dtype=bool))

    def _step(self, g: int, kept: int) -> int:
        r = int(self.align[g])
        return kept % r or r

    def walk(self, order: np.ndarray, target: float, metric: str) -> tuple[np.ndarray, list[list[int]]]:
        """Remove units in ``order`` until cost <= target; returns (removed mask, removed batches)."""
        cost = self.cost
        cost.reset()
        kept = self.size.copy()
        done = np.zeros(len(kept), dtype=bool)  # group at its floor
        pending: dict[int, list[int]] = {}
        batches: list[list[int]] = []
        removed = np.zeros(len(self.graph.units), dtype=bool)
        if cost.value(metric) <= target:
            return removed, batches
        for u in order.tolist():
            if u < 0:  # a whole branch (time-aware order): what is left of its group goes at once
                g = -u - 1
                batch = [v for v in self.graph.groups[g].units if not removed[v]]
                if done[g] or not batch or not self._try_remove(batch, allow_empty=True):
                    continue
                kept[g], done[g], pending[g] = 0, True, []
                removed[batch] = True
                batches.append(batch)
                if cost.value(metric) <= target:
                    break
                continue
            g = int(self.group_of[u])
            if done[g]:
                continue
            batch = pending.setdefault(g, [])
            batch.append(u)
            need = self._step(g, int(kept[g]))
            emptying = kept[g] - need < self.floor[g] and self.depth[g]
            if emptying:  # a depth unit at its floor goes whole, at its highest remaining score
                need = int(kept[g])
            if len(batch) < need:
                continue
            pending[g] = []
            if kept[g] - need < self.floor[g] and not emptying:
                done[g] = True
                continue
            if not self._try_remove(batch, allow_empty=emptying):
                continue
            kept[g] -= need
            removed[batch] = True
            batches.append(batch)
            if cost.value(metric) <= target:
                break
        return removed, batches

    def _try_remove(self, batch: list[int], allow_empty: bool = False) -> bool:
        """Remove a batch unless some module axis would lose its last channel (``allow_empty``: a depth unit's
        whole group, whose modules go with its branch)."""
        done = []
        for u in batch:
            if not allow_empty and self.cost.min_kept(u) < 1:
                for v in reversed(done):
                    self.cost.restore(v)
                return False
            self.cost.remove(u)
            done.append(u)
        return True

    def refill(self, removed: np.ndarray, batches: list[list[int]], target: float, metric: str) -> None:
        """Restore the latest batch of each group while the cost stays at or below ``target``."""
        blocked: set[int] = set()
        for batch in reversed(batches):
            g = int(self.group_of[batch[0]])
            if g in blocked:
                continue
            for u in batch:
                self.cost.restore(u)
            if self.cost.value(metric) <= target:
                removed[batch] = False
            else:
                for u in batch:
                    self.cost.remove(u)
                blocked.add(g)


def plan(
    graph: ChannelGraph,
    cost: CostModel,
    scores: np.ndarray,
    *,
    budget: float,
    budget_type: str = "macs",
    method: str = "global",
    transforms: Transforms | None = None,
    seed: int = 0,
    min_ratio: float = 0.1,
    min_channels: int = 2,
    round_to: int = 1,
    time_aware: bool = False,
) -> Plan:
    """Choose the units to remove so that the cost is at most ``budget`` x baseline.

    ``scores`` is one raw importance per unit (``importance.unit_scores``). Methods: ``global`` (identity
    compensation), ``lcp`` (``transforms``), ``random`` (seeded random ranking), ``uniform`` (one keep ratio for
    every group, solved to hit the budget). ``time_aware`` (latency budgets, ``global`` and ``lcp``): the
    ranking is by importance per millisecond saved (``time_aware_ranking``).
    """
    check_budget(budget, budget_type)
    if method not in ORDERS:
        raise LcpError(f"unknown method '{method}'; choose one of {', '.join(ORDERS)}")
    metric, base, target = budget_type, cost.base(budget_type), budget * cost.base(budget_type)
    walker = Walker(graph, cost, min_ratio=min_ratio, min_channels=min_channels, round_to=round_to)
    if method == "uniform":
        removed = _uniform(graph, cost, walker, scores, target, metric)
    else:
        if method == "random":
            rng = np.random.default_rng(seed)
            order = rng.permutation(np.asarray(graph.prunable_units, dtype=np.int64))
        else:
            tf = transforms if (transforms is not None and method == "lcp") else Transforms.identity(graph)
            compensated = compensated_scores(graph, scores, tf)
            if time_aware and metric == "latency":
                order = time_aware_ranking(
                    graph, ranking(graph, compensated), *time_gains(graph, cost, walker.floor, walker.depth)
                )
            else:
                order = ranking(graph, compensated)
        removed, batches = walker.walk(order, target, metric)
        if cost.value(metric) > target:
            lowest = cost.value(metric) / base
            cost.reset()
            need = np.ceil(lowest * 1000) / 1000
            advice = f"pass --budget {need:g} or more" if need < 1 else "almost nothing in it can be pruned"
            raise UnreachableBudget(
                f"budget {budget:g} of {metric} cannot be met: the lowest reachable is {lowest:.4f} "
                f"({_frozen_hint(graph, min_ratio)}); {advice}",
                lowest,
            )
        walker.refill(removed, batches, target, metric)
    macs, params = cost.macs, cost.params
    cost.reset()
    return Plan(removed, macs, params, cost.macs_base, cost.params_base, budget, budget_type, method)


def plan_ratios(
    graph: ChannelGraph,
    cost: CostModel,
    scores: np.ndarray,
    ratios: np.ndarray,
    *,
    budget: float,
    budget_type: str = "macs",
    method: str = "ratios",
    min_ratio: float = 0.1,
    min_channels: int = 2,
    round_to: int = 1,
) -> Plan:
    """Keep the highest-scored units of each group by its keep ratio, scaled to meet ``budget`` like ``uniform``.

    ``ratios`` (one per group, in (0, 1]) set the shape; one factor t scales them all (group g keeps
    ``min(1, t * ratios[g])`` of its units, at least its floor), bisected to the largest t at or below the
    budget, then the best removed units that still fit are restored (``uniform`` is all ratios 1). With
    ``round_to`` above 1 the widths are instead the aligned ones nearest the ratios, moved step by step towards
    them until the budget holds (:func:`aligned_ratios.aligned_ratio_cut`).
    """
    check_budget(budget, budget_type)
    r = np.asarray(ratios, dtype=np.float64)
    if r.shape != (len(graph.groups),) or not (np.all(np.isfinite(r)) and np.all(r > 0) and np.all(r <= 1)):
        raise LcpError(f"ratios must be {len(graph.groups)} keep ratios in (0, 1], one per channel group")
    walker = Walker(graph, cost, min_ratio=min_ratio, min_channels=min_channels, round_to=round_to)
    target = budget * cost.base(budget_type)
    if walker.round_to > 1:  # one factor on every ratio would spread the rounding over every group
        try:
            removed = aligned_ratio_cut(
                graph, cost, scores, r, align=walker.align, floor=walker.floor, target=target, metric=budget_type
            )
        except UnreachableBudget as e:
            raise UnreachableBudget(
                f"budget cannot be met with these aligned widths: the lowest reachable is {e.lowest:.4f} "
                f"({_frozen_hint(graph, min_ratio)})",
                e.lowest,
            ) from None
    else:
        removed = _uniform(graph, cost, walker, scores, target, budget_type, r)
    macs, params = cost.macs, cost.params
    cost.reset()
    return Plan(removed, macs, params, cost.macs_base, cost.params_base, budget, budget_type, method)


def _uniform(
    graph: ChannelGraph,
    cost: CostModel,
    walker: Walker,
    scores: np.ndarray,
    target: float,
    metric: str,
    ratios: np.ndarray | None = None,
) -> np.ndarray:
    """Largest single keep ratio (per group, lowest scores first) whose cost is at or below target.

    With ``ratios`` group g keeps ``min(1, t * ratios[g])``, bisecting t in [0, 1 / min(ratios)].
    """
    shape = np.ones(len(graph.groups)) if ratios is None else np.asarray(ratios, dtype=np.float64)
    orders = []
    for g in graph.groups:
        idx = np.asarray(g.units, dtype=np.int64)
        orders.append(idx[np.lexsort((idx, scores[idx]))])

    def removal(ratio: float) -> tuple[np.ndarray, int]:
        """Units removed at ``ratio`` (never a module's last channel) and the resulting cost."""
        removed = np.zeros(len(graph.units), dtype=bool)
        cost.reset()
        for g, order in zip(graph.groups, orders):
            n, r = len(order), int(walker.align[g.index])
            keep = max(int(walker.floor[g.index]), int(np.ceil(min(1.0, ratio * shape[g.index]) * n)))
            if r > 1 and keep < n:
                keep = min(n, int(np.ceil(keep / r) * r))
            for u in order[: n - keep].tolist():
                if cost.min_kept(u) >= 1:  # never a module's (or split piece's) last channel
                    cost.remove(u)
                    removed[u] = True
        return removed, cost.value(metric)

    lo, hi = 0.0, 1.0 / float(shape.min(initial=1.0))
    best, value = removal(lo)
    if value > target:
        lowest = value / cost.base(metric)
        cost.reset()
        raise UnreachableBudget(
            f"budget cannot be met with uniform pruning: the lowest reachable is {lowest:.4f} "
            f"({_frozen_hint(graph, walker.min_ratio)})",
            lowest,
        )
    for _ in range(40):
        mid = (lo + hi) / 2
        rem, value = removal(mid)
        if value <= target:
            lo, best = mid, rem
        else:
            hi = mid
    cost.reset()
    for u in np.nonzero(best)[0].tolist():
        cost.remove(u)
    # one ratio moves whole steps per group; top up with the best removed units that still fit the budget
    if walker.round_to > 1:
        _top_up_aligned(graph, walker, cost, scores, best, target, metric)
        return best
    removed_units = np.nonzero(best)[0]
    for u in removed_units[np.lexsort((removed_units, -scores[removed_units]))].tolist():
        cost.restore(u)
        if cost.value(metric) <= target:
            best[u] = False
        else:
            cost.remove(u)
    return best


def _top_up_aligned(
    graph: ChannelGraph, walker: Walker, cost: CostModel, scores: np.ndarray, removed: np.ndarray, target: float,
    metric: str,
) -> None:  # fmt: skip
    """Restore whole alignment steps (each group's best removed units) while the cost stays at or below target,
    best steps first, until none fits: with coarse steps a single ratio can land far under the budget."""
    while True:
        steps, restored = [], False
        for g in graph.groups:
            out = (idx := np.asarray(g.units, dtype=np.int64))[removed[idx]]
            if len(out):
                out = out[np.lexsort((out, -scores[out]))][: int(walker.align[g.index])]
                steps.append((-float(scores[out].mean()), g.index, out.tolist()))
        for _, _, step in sorted(steps):
            for u in step:
                cost.restore(u)
            if cost.value(metric) <= target:
                removed[step] = False
                restored = True
            else:
                for u in step:
                    cost.remove(u)
        if not restored:
            return


def _frozen_hint(graph: ChannelGraph, min_ratio: float) -> str:
    ops = sorted({f"{f.op}: {f.reason}" for f in graph.frozen_ops})  # the first three named
    frozen = "; ".join(ops[:3]) + (f" and {len(ops) - 3} more" if len(ops) > 3 else "")
    floors = f"floors of {min_ratio:.0%} per group (--min-ratio)"
    if (graph.max_removal < 1).any():  # caps act in whole multiples of the width rounding: say so
        caps = f"{floors} and the --max-removal caps (in whole multiples of --round-to)"
        return caps + (f"; channels frozen by {frozen}" if ops else "")
    return f"{floors} and channels frozen by {frozen}" if ops else floors

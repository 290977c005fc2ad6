"""One call from a model to a verified, physically pruned model: graph -> importance -> plan -> surgery."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from lcp.cut import importance as imp
from lcp.cut.latency import median_error, paired_latency
from lcp.cut.latency_table import LatencyTable, timed_input_size
from lcp.cut.options import check_budget
from lcp.cut.ranking import Plan, plan, plan_ratios
from lcp.cut.transforms import Transforms
from lcp.engine.cost import CostModel, count_macs, count_params
from lcp.engine.graph import ChannelGraph
from lcp.engine.surgery import Verification, apply_plan, verify
from lcp.errors import LcpError, UnreachableBudget


@dataclass
class PruneResult:
    """The pruned model and everything needed to explain, save and rebuild it."""

    model: nn.Module
    plan: Plan
    graph: ChannelGraph
    transforms: Transforms
    verification: Verification | None
    scores: np.ndarray
    seconds: float
    info: dict = field(default_factory=dict)
    report: Any = None  # pandas DataFrame (one row) when data was given

    @property
    def removed_units(self) -> list[str]:
        """Stable keys of the removed units (what ``channels.json`` stores)."""
        return [self.graph.units[u].key for u in np.nonzero(self.plan.removed)[0].tolist()]


def group_widths(graph: ChannelGraph, removed: np.ndarray) -> list[dict]:
    """Per group: its producer modules and how many units it has before and after."""
    rows = []
    for g in graph.groups:
        idx = np.asarray(g.units)
        rows.append(
            {
                "group": g.name,
                "layers": ";".join(g.producers),
                "channels_before": len(idx),
                "channels_after": int((~removed[idx]).sum()),
            }
        )
    return rows


def prune_graph(
    graph: ChannelGraph,
    *,
    budget: float = 0.5,
    budget_type: str = "macs",
    method: str = "global",
    importance: str = "l2",
    aggregate: str = "mean",
    transforms: Transforms | None = None,
    round_to: int = 1,
    min_ratio: float = 0.1,
    seed: int = 0,
    check: bool = True,
    batches: Iterable | None = None,
    cost: CostModel | None = None,
    latency: dict | None = None,
    ratios: np.ndarray | None = None,
    label: str | None = None,
) -> PruneResult:
    """Plan, build and verify a pruned model from an existing channel graph.

    ``method`` is the order of the walk (``lcp.cut.ranking.ORDERS``: ``lcp`` ranks by ``transforms``, ``global``
    by the raw scores, ``uniform``, ``random``); ``ratios``: per-group keep ratios (``plan_ratios``) instead;
    ``label``: the method name the plan records (default ``method``).
    """
    t0 = time.perf_counter()
    check_budget(budget, budget_type)
    if method == "lcp" and transforms is None:
        raise LcpError("method 'lcp' needs learned transforms (--transforms FILE, or run `lcp search` first)")
    if ratios is not None and budget_type == "latency":
        raise LcpError(f"method {label or method} takes a macs or params budget, not latency")
    if not graph.prunable_units:
        raise LcpError("nothing in this model can be pruned safely: " + _frozen_list(graph))
    cost = cost or CostModel(graph)
    scores = imp.unit_scores(graph, imp.filter_scores(graph, importance, batches), aggregate)
    tf = transforms if transforms is not None else Transforms.identity(graph)
    info: dict = {}
    if budget_type == "latency":
        p, pruned, info = _latency_cut(
            graph,
            cost,
            scores,
            budget=budget,
            method=method,
            transforms=tf,
            seed=seed,
            min_ratio=min_ratio,
            round_to=round_to,
            **(latency or {}),
        )
    else:
        if ratios is not None:
            p = plan_ratios(
                graph,
                cost,
                scores,
                ratios,
                budget=budget,
                budget_type=budget_type,
                method=label or "ratios",
                min_ratio=min_ratio,
                round_to=round_to,
            )
        else:
            p = plan(
                graph,
                cost,
                scores,
                budget=budget,
                budget_type=budget_type,
                method=method,
                transforms=tf,
                seed=seed,
                min_ratio=min_ratio,
                round_to=round_to,
            )
        pruned = apply_plan(graph, p.removed)
    if label:
        p.method = label
    ver = None
    if check:
        ver = check_pruned(graph, p, pruned)
    return PruneResult(pruned, p, graph, tf, ver, scores, time.perf_counter() - t0, info)


def cut_removed(
    graph: ChannelGraph,
    removed: np.ndarray,
    *,
    budget: float,
    budget_type: str = "macs",
    method: str = "given",
    check: bool = True,
) -> PruneResult:
    """Remove the given units (bool per unit; no ranking): cost, surgery and verification as ``prune_graph``."""
    t0 = time.perf_counter()
    removed = np.asarray(removed, dtype=bool)
    cost = CostModel(graph)
    macs, params = cost.evaluate(removed)
    p = Plan(removed, macs, params, cost.macs_base, cost.params_base, budget, budget_type, method)
    pruned = apply_plan(graph, removed)
    ver = check_pruned(graph, p, pruned) if check else None
    return PruneResult(
        pruned, p, graph, Transforms.identity(graph), ver, np.full(len(graph.units), np.nan), time.perf_counter() - t0
    )


def _latency_cut(
    graph: ChannelGraph,
    cost: CostModel,
    scores: np.ndarray,
    *,
    budget: float,
    method: str,
    transforms: Transforms,
    seed: int,
    min_ratio: float,
    round_to: int,
    batch: int = 1,
    device: str = "cpu",
    n_threads: int | None = None,
    repeats: int = 20,
    tolerance: float = 0.05,
    max_timings: int = 30,
    table: Any = None,
    progress: bool = False,
    time_aware: bool = False,
) -> tuple[Plan, nn.Module, dict]:
    """Cut to ``budget`` x the measured latency of the original on this device.

    The greedy walk uses a per-layer latency lookup table (``latency_table.LatencyTable``, NetAdapt-style) as its
    cost. The table is a model, so every walk's network is built and timed as a whole against the original
    (``paired_latency``: alternating rounds, ``repeats`` timings each). The walks aim at the middle of the
    accepted band ``[(1 - tolerance) x budget, budget]``, so that timing noise of half the tolerance keeps a
    network inside it; the next walk's table target is the secant through the two walks that bracket the aim
    (before there are two: the last target corrected by the measured/predicted ratio). A network measured
    inside the band is timed again, its rounds pooled, until the standard error of their median is at most a
    quarter of the tolerance (at least twice): it is accepted when the pooled median is still inside, so one
    lucky reading is not enough. After ``max_timings`` timings without that, the network with the largest
    measured ratio within the budget is returned. ``time_aware``: the walk ranks by importance per millisecond
    saved (``lcp.cut.time_aware``).
    """
    size = timed_input_size(graph)
    table = table or LatencyTable.build(graph, batch=batch, device=device, n_threads=n_threads, progress=progress)
    lcost = CostModel(graph, latency=table)
    low, aim = (1 - tolerance) * budget, (1 - tolerance / 2) * budget
    floor = 0.0  # the lowest walk target the per-layer floors allow, once a walk ran into them

    def walk(target: float) -> tuple[Plan, float]:
        nonlocal floor
        target = min(1.0, max(target, floor))
        try:
            return plan(
                graph,
                lcost,
                scores,
                budget=target,
                budget_type="latency",
                method=method,
                transforms=transforms,
                seed=seed,
                min_ratio=min_ratio,
                round_to=round_to,
                time_aware=time_aware,
            ), target
        except UnreachableBudget as e:  # below the floors: the smallest network there is
            floor = min(1.0, e.lowest + 1e-9)
            return walk(floor)

    nets: list[dict] = []  # one per distinct network: walk target, plan, module, timing rounds, ratio
    timings, target = 0, aim
    while timings < max_timings:
        p, target = walk(target)
        net = next((n for n in nets if np.array_equal(n["plan"].removed, p.removed)), None)
        if net is None:
            net = {"target": target, "plan": p, "model": apply_plan(graph, p.removed), "rounds": [], "ms": []}
            nets.append(net)
        while timings < max_timings:  # time it; again while it is in the band but not yet known precisely
            t = paired_latency(
                net["model"], graph.model, size, batch=batch, device=device, n_threads=n_threads, repeats=repeats
            )
            timings += 1
            net["rounds"] += t["rounds"]
            net["ms"].append((t["median_ms"], t["reference_ms"]))
            net["ratio"] = float(np.median(net["rounds"]))
            net["precise"] = len(net["ms"]) > 1 and median_error(net["rounds"]) <= tolerance / 4
            if not low <= net["ratio"] <= budget or net["precise"]:
                break
        if low <= net["ratio"] <= budget and net["precise"]:
            break
        if net["ratio"] > budget and net["target"] <= floor:
            break  # the smallest network misses: unreachable
        target = _next_target(nets, aim)
        if target is None:
            break
    within = [n for n in nets if n["ratio"] <= budget]
    if not within:
        lowest = min(n["ratio"] for n in nets)
        raise UnreachableBudget(
            f"latency budget {budget:g} cannot be met: the smallest network tried runs at "
            f"{lowest:.3f} of the original's latency",
            lowest,
        )
    best = max(within, key=lambda n: n["ratio"])
    p = best["plan"]
    p.budget, p.budget_type = budget, "latency"
    ms, ref_ms = (float(np.median(x)) for x in zip(*best["ms"]))
    return (
        p,
        best["model"],
        {
            "latency_base_ms": ref_ms,
            "latency_pruned_ms": ms,
            "latency_ratio": best["ratio"],
            "latency_batch": batch,
            "latency_device": device,
            "latency_walks": len(nets),
            "latency_timings": timings,
            "latency_error": median_error(best["rounds"]),
            "latency_table_layers": table.info["layers"],
        },
    )


def _next_target(nets: list[dict], aim: float) -> float | None:
    """The next walk's table target from the networks timed so far (None: nothing left between them)."""
    below = [n for n in nets if n["ratio"] <= aim]
    above = [n for n in nets if n["ratio"] > aim]
    if below and above:
        lo = max(below, key=lambda n: n["target"])
        hi = min(above, key=lambda n: n["target"])
        gap = hi["target"] - lo["target"]
        if abs(gap) < 1e-4:
            return None
        if gap < 0:  # timing noise reversed the order of two close networks: try between them
            return (lo["target"] + hi["target"]) / 2
        t = lo["target"] + (aim - lo["ratio"]) * gap / (hi["ratio"] - lo["ratio"])
        return min(max(t, lo["target"] + 0.1 * gap), hi["target"] - 0.1 * gap)  # keep a step inside the bracket
    last = (below or above)[-1]
    return last["target"] * aim / last["ratio"]


def check_pruned(graph: ChannelGraph, p: Plan, pruned: nn.Module) -> Verification:
    """Refuse (LcpError) a pruned model that differs from the masked original or from its planned cost."""
    ver = verify(graph, p.removed, pruned)
    if not ver.ok:
        raise LcpError(
            f"refusing the pruned {type(graph.model).__name__}: it does not match the masked original "
            f"({ver}); please report this model to lcp"
        )
    untraced = train_only_modules(graph)
    if untraced:
        _runs_in_train_mode(graph, pruned, untraced)
    macs = count_macs(pruned, graph.example_inputs)  # the inputs the original ran on, in their own dtype
    params = count_params(pruned)
    if macs != p.macs or params != p.params:
        raise LcpError(
            f"refusing the pruned model: built network has {macs} MACs / {params} params, "
            f"the plan said {p.macs} / {p.params}; please report this model to lcp"
        )
    return ver


def train_only_modules(graph: ChannelGraph) -> list[str]:
    """Submodules holding parameters that the eval-mode trace never reaches (branches only training runs, such as
    GoogLeNet's and Inception's auxiliary classifiers): what they read is unknown to the channel graph."""
    reached = {n.target for n in graph.gm.graph.nodes if n.op == "call_module"}
    reached |= {str(n.target).rpartition(".")[0] for n in graph.gm.graph.nodes if n.op == "get_attr"}

    def covered(name: str) -> bool:
        return any(name == r or name.startswith(r + ".") or r.startswith(name + ".") for r in reached)

    return [
        name
        for name, m in graph.model.named_modules()
        if name and any(v is not None for v in m._parameters.values()) and not covered(name)
    ]


def _runs_in_train_mode(graph: ChannelGraph, pruned: nn.Module, untraced: list[str]) -> None:
    """Refuse a pruned network that runs in eval mode but not in train mode (a train-only branch reads channels
    that were cut). A copy runs, on a batch of at least 2, without touching the global random state."""
    x = tree_map_only(torch.Tensor, lambda t: torch.cat([t, t]) if t.dim() and t.shape[0] == 1 else t,
                      tuple(graph.example_inputs))  # fmt: skip
    model = copy.deepcopy(pruned).train()
    with torch.no_grad(), torch.random.fork_rng():
        try:
            model(*x)
        except Exception as e:
            try:
                copy.deepcopy(graph.model).train()(*x)
            except Exception as original:  # not the cut's doing: the model itself cannot train on this input
                raise LcpError(
                    f"refusing to prune {type(graph.model).__name__} on this example input: the original does "
                    f"not run in train mode on it ({type(original).__name__}: "
                    f"{str(original).splitlines()[0] if str(original) else ''}); pass a larger example input"
                ) from None
            shown = ", ".join(untraced[:3]) + (f" and {len(untraced) - 3} more" if len(untraced) > 3 else "")
            raise LcpError(
                f"refusing the pruned {type(graph.model).__name__}: it runs in eval mode but not in train mode "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); modules only training runs "
                f"({shown}) read channels that were cut: build the model without them (e.g. aux_logits=False) or "
                "keep their inputs whole with --ignore"
            ) from None


def _frozen_list(graph: ChannelGraph) -> str:
    ops = sorted({f"{f.op} ({f.reason})" for f in graph.frozen_ops})
    if ops:
        return "; ".join(ops[:5]) + (f" and {len(ops) - 5} more" if len(ops) > 5 else "")
    reasons = sorted({u.frozen for u in graph.units if u.frozen})  # no op froze them: model inputs and outputs
    if reasons:
        return "every width is fixed: " + "; ".join(reasons[:5])
    return "no prunable channels"

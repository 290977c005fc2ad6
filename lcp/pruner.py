"""One call from a model to a verified, physically pruned model: graph -> importance -> plan -> surgery."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from . import importance as imp
from .cost import CostModel, count_macs, count_params
from .errors import LcpError
from .graph import ChannelGraph, build_graph
from .ranking import Plan, Transforms, check_budget, plan
from .surgery import Verification, apply_plan, verify


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

    @property
    def removed_units(self) -> list[str]:
        """Stable keys of the removed units (what ``channels.json`` stores)."""
        return [self.graph.units[u].key for u in np.nonzero(self.plan.removed)[0].tolist()]


def group_widths(graph: ChannelGraph, removed: np.ndarray) -> list[dict]:
    """Per group: its producer modules and how many units it has before and after."""
    rows = []
    for g in graph.groups:
        idx = np.asarray(g.units)
        rows.append({"group": g.name, "layers": ";".join(g.producers), "channels_before": len(idx),
                     "channels_after": int((~removed[idx]).sum())})
    return rows


def prune_graph(graph: ChannelGraph, *, budget: float = 0.5, budget_type: str = "macs", method: str = "global",
                importance: str = "l2", aggregate: str = "mean", transforms: Transforms | None = None,
                round_to: int = 1, min_ratio: float = 0.1, seed: int = 0, check: bool = True,
                batches: Iterable | None = None, cost: CostModel | None = None) -> PruneResult:
    """Plan and build a pruned model from an existing channel graph (see ``prune``)."""
    t0 = time.perf_counter()
    check_budget(budget, budget_type)
    if method == "lcp" and transforms is None:
        raise LcpError("method 'lcp' needs learned transforms (--transforms FILE, or run `lcp search` first)")
    if not graph.prunable_units:
        raise LcpError("nothing in this model can be pruned safely: " + _frozen_list(graph))
    cost = cost or CostModel(graph)
    scores = imp.unit_scores(graph, imp.filter_scores(graph, importance, batches), aggregate)
    tf = transforms if transforms is not None else Transforms.identity(graph)
    p = plan(graph, cost, scores, budget=budget, budget_type=budget_type, method=method, transforms=tf,
             seed=seed, min_ratio=min_ratio, round_to=round_to)
    pruned = apply_plan(graph, p.removed)
    ver = None
    if check:
        ver = check_pruned(graph, p, pruned)
    return PruneResult(pruned, p, graph, tf, ver, scores, time.perf_counter() - t0)


def check_pruned(graph: ChannelGraph, p: Plan, pruned: nn.Module) -> Verification:
    """Refuse (LcpError) a pruned model that differs from the masked original or from its planned cost."""
    ver = verify(graph, p.removed, pruned)
    if not ver.ok:
        raise LcpError(f"refusing the pruned {type(graph.model).__name__}: it does not match the masked original "
                       f"({ver}); please report this model to lcp")
    macs = count_macs(pruned, tuple(x.float() for x in graph.example_inputs))
    params = count_params(pruned)
    if macs != p.macs or params != p.params:
        raise LcpError(f"refusing the pruned model: built network has {macs} MACs / {params} params, "
                       f"the plan said {p.macs} / {p.params}; please report this model to lcp")
    return ver


def prune(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], *, budget: float = 0.5,
          budget_type: str = "macs", method: str = "global", importance: str = "l2", aggregate: str = "mean",
          transforms: Transforms | None = None, round_to: int = 1, min_ratio: float = 0.1, seed: int = 0,
          check: bool = True, batches: Iterable | None = None) -> PruneResult:
    """Prune ``model`` to ``budget`` x its baseline cost; returns a ``PruneResult`` whose ``.model`` is pruned.

    ``budget=0.5, budget_type="macs"`` keeps 50% of the baseline MACs. ``method``: ``global`` (plain global
    ranking), ``lcp`` (with learned ``transforms``), ``uniform``, ``random``. Every result is verified against
    the masked original and its MACs re-counted; a model lcp cannot prune safely raises ``LcpError``.
    The original model is not modified.
    """
    check_budget(budget, budget_type)
    graph = build_graph(model, example_inputs)
    return prune_graph(graph, budget=budget, budget_type=budget_type, method=method, importance=importance,
                       aggregate=aggregate, transforms=transforms, round_to=round_to, min_ratio=min_ratio,
                       seed=seed, check=check, batches=batches)


def _frozen_list(graph: ChannelGraph) -> str:
    ops = sorted({f"{f.op} ({f.reason})" for f in graph.frozen_ops})
    return "; ".join(ops[:5]) + (f" and {len(ops) - 5} more" if len(ops) > 5 else "") or "no prunable channels"

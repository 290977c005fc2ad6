"""Filter importance: one score per channel unit.

A unit's producers are the conv/linear filters that write its channels (a residual stream has many). Each
producer filter gets a score from the criterion; the unit's score aggregates its producer filters' scores:
``mean`` (default: a residual stream is judged like any single layer) or ``sum`` (LeGR's code, which makes
residual streams almost unprunable because they sum over many layers).

Criteria are strategy objects in a registry (``Importance``, ``register_importance``): ``l2`` (default), ``l1``,
``bn_scale`` and ``taylor`` are built in, and their names are the string aliases the options take.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from lcp.engine.graph import ChannelGraph
from lcp.engine.layers import LAYERS
from lcp.engine.modes import modes_kept
from lcp.engine.types import LayerKind, Record
from lcp.errors import LcpError

Batch = tuple[torch.Tensor, torch.Tensor]

AGGREGATIONS = ("mean", "sum")
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


class Importance:
    """A filter-importance criterion: ``criterion(graph, batches)`` scores every output position of every
    conv/linear record (keyed by record index); higher means more important. Register one with
    ``@register_importance`` and choose it by ``name`` (``--importance NAME``, ``lcp.prune(importance=NAME)``)."""

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False  # scored on training batches (``batches``)

    def __call__(self, graph: ChannelGraph, batches: Iterable[Batch] | None = None) -> dict[int, np.ndarray]:
        raise NotImplementedError

    @staticmethod
    def producers(graph: ChannelGraph) -> dict[int, Any]:
        """The records that own filters (convs, linears), by index."""
        return {ri: r for ri, r in enumerate(graph.records) if r.kind.has_filters}


_CRITERIA: dict[str, Importance] = {}


def register_importance(cls: type[Importance]) -> type[Importance]:
    """Class decorator: make the criterion ``cls`` available by its ``name``."""
    _CRITERIA[cls.name] = cls()
    return cls


def unregister_importance(name: str) -> None:
    _CRITERIA.pop(name, None)


def importance_names() -> list[str]:
    """The registered criteria (``--importance`` choices)."""
    return list(_CRITERIA)


def get_importance(name: str) -> Importance:
    try:
        return _CRITERIA[name]
    except KeyError:
        raise LcpError(f"unknown importance '{name}'; choose one of {', '.join(_CRITERIA)}") from None


def _filters(m: nn.Module, r: Record) -> torch.Tensor:
    """The weight of ``r``'s module with one row per output position."""
    return LAYERS[r.kind].filters(m, m.weight)


def _weight_scores(w: torch.Tensor, p: int) -> np.ndarray:
    w = w.detach().double().flatten(1)
    return (w.pow(2).sum(1) if p == 2 else w.abs().sum(1)).cpu().numpy()


@register_importance
class L2(Importance):
    """Squared L2 norm of each filter's weights."""

    name = "l2"
    p = 2

    def __call__(self, graph: ChannelGraph, batches: Iterable[Batch] | None = None) -> dict[int, np.ndarray]:
        modules = dict(graph.model.named_modules())
        return {ri: _weight_scores(_filters(modules[r.name], r), self.p) for ri, r in self.producers(graph).items()}


@register_importance
class L1(L2):
    """L1 norm of each filter's weights."""

    name = "l1"
    p = 1


@register_importance
class BnScale(Importance):
    """|gamma| of the norms in a unit, spread onto the producer positions of that unit (weight L2 where a unit
    has no norm)."""

    name = "bn_scale"

    def __call__(self, graph: ChannelGraph, batches: Iterable[Batch] | None = None) -> dict[int, np.ndarray]:
        modules = dict(graph.model.named_modules())
        gamma = np.zeros(len(graph.units))
        count = np.zeros(len(graph.units))
        for ri, r in enumerate(graph.records):
            m = modules.get(r.name)
            # NORM records also hold per-channel PReLU slopes and layer scales: only a norm's weight is a gamma
            if r.kind == LayerKind.NORM and isinstance(m, _NORMS) and getattr(m, "weight", None) is not None:
                units = graph.axis_units[(ri, "out")]
                np.add.at(gamma, units, m.weight.detach().abs().double().cpu().numpy())
                np.add.at(count, units, 1)
        per_unit = np.divide(gamma, count, out=np.full_like(gamma, np.nan), where=count > 0)
        out = {}
        for ri, r in self.producers(graph).items():
            s = per_unit[graph.axis_units[(ri, "out")]]
            fallback = _weight_scores(_filters(modules[r.name], r), 2)  # units without a norm: weight norm
            out[ri] = np.where(np.isnan(s), fallback, s)
        return out


@register_importance
class Taylor(Importance):
    """First-order Taylor: (sum over a filter's weights of w * dL/dw)^2, accumulated over training batches.

    Frozen weights (``requires_grad=False``) are scored like the others: during the pass only the filter weights
    take gradients; every parameter's ``requires_grad`` and ``.grad`` and every module's mode are restored."""

    name = "taylor"
    needs_data = True

    def __call__(self, graph: ChannelGraph, batches: Iterable[Batch] | None = None) -> dict[int, np.ndarray]:
        if batches is None:
            raise LcpError("importance 'taylor' needs data: pass training batches")
        modules = dict(graph.model.named_modules())
        model = graph.model
        producers = self.producers(graph)
        weights = {ri: modules[r.name].weight for ri, r in producers.items()}
        acc = {ri: np.zeros(len(r.out_ids)) for ri, r in producers.items()}
        scored = {id(w) for w in weights.values()}
        saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
        try:
            with modes_kept(model), torch.enable_grad():
                model.eval()
                for p, _, _ in saved:
                    p.requires_grad_(id(p) in scored)
                seen = 0
                for batch in batches:
                    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                        raise LcpError(
                            "importance 'taylor' takes (images, labels) batches: its scores are gradients of the "
                            f"classification loss, and a batch here is a {type(batch).__name__}"
                        )
                    x, y = batch
                    for p, _, _ in saved:
                        p.grad = None
                    nn.functional.cross_entropy(model(x), y).backward()
                    seen += 1
                    for ri, w in weights.items():
                        if w.grad is not None:
                            wg = LAYERS[producers[ri].kind].filters(modules[producers[ri].name], w.detach() * w.grad)
                            acc[ri] += wg.flatten(1).sum(1).double().pow(2).cpu().numpy()
                if not seen:
                    raise LcpError("importance 'taylor' got no batches: every score would be 0")
        finally:
            for p, requires_grad, grad in saved:
                p.requires_grad_(requires_grad)
                p.grad = grad
        return acc


def filter_scores(
    graph: ChannelGraph, criterion: str | Importance = "l2", batches: Iterable[Batch] | None = None
) -> dict[int, np.ndarray]:
    """Score of every output position of every conv/linear record, keyed by record index (``criterion``: a
    registered name or an ``Importance``)."""
    strategy = get_importance(criterion) if isinstance(criterion, str) else criterion
    return strategy(graph, batches)


def unit_scores(graph: ChannelGraph, scores: dict[int, np.ndarray], aggregate: str = "mean") -> np.ndarray:
    """One score per unit (NaN for units that cannot be pruned)."""
    if aggregate not in AGGREGATIONS:
        raise LcpError(f"unknown aggregation '{aggregate}'; choose one of {', '.join(AGGREGATIONS)}")
    out = np.full(len(graph.units), np.nan)
    reduce: Callable[[np.ndarray], float] = np.mean if aggregate == "mean" else np.sum
    for unit in graph.units:
        if unit.prunable:
            vals = np.concatenate([scores[ri][pos] for ri, pos in unit.producers])
            out[unit.index] = float(reduce(vals))
    return out

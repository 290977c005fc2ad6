"""Connection-level pruning of DenseNets: drop one source's channel slice from one consumer's input.

A *connection* (source s -> consumer c) is the set of input positions of a consumer (a dense conv or linear
whose input is a concat of several producers' outputs) that come from one producing module s. Removing it
slices the consumer's input weights and the BatchNorm in front of it (when that norm feeds only this
consumer) and inserts a channel gather (``index_select`` on the channel dim) before them, in a
``torch.fx.GraphModule``; other consumers of s keep it. A consumer whose output nobody reads any more (every
outgoing connection dropped, and nothing else reads it) is *dead*: its conv is replaced by :class:`ZeroConv`
(no weights, no MACs, a zero tensor of the conv's output shape) and its private norm is deleted.

Everything is derived from the channel graph (``graph.records`` and the union-find ids), so it works on any
traced model whose concats the engine tracks (lcp's ``densenet40``; timm DenseNets when they trace).
See docs/connections.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from lcp.engine.connection_budget import minimal_mask, project_to_budget
from lcp.engine.connection_surgery import (
    ZeroConv,
    apply_connections,
    masked_connections,
    prune_connections,
    verify_connections,
)
from lcp.engine.cost import CostModel, record_cost
from lcp.engine.graph import ChannelGraph, build_graph
from lcp.engine.surgery import Verification
from lcp.engine.types import LayerKind
from lcp.errors import LcpError

__all__ = ["Connection", "ConnectionGraph", "Consumer", "ZeroConv", "build"]


_PASS_FUNCS = {
    "relu",
    "relu_",
    "relu6",
    "silu",
    "gelu",
    "hardswish",
    "leaky_relu",
    "elu",
    "dropout",
    "adaptive_avg_pool2d",
    "avg_pool2d",
    "flatten",
    "contiguous",
    "clone",
}


@dataclass
class Consumer:
    """A module that reads a concat of several sources, and what belongs to it alone."""

    record: int  # index into graph.records
    name: str
    kind: LayerKind  # conv | linear
    norm: int | None  # record index of its private norm (sliced with it), if any
    norm_node: str | None  # fx node whose input gets the gather (norm or consumer)
    gather_dim: int  # channel dim at the gather (1, or -1 for a linear without private norm)
    block: int
    sources: list[int] = field(default_factory=list)  # connection indices, in source order
    pinned: bool = False  # its output is read by something other than connections: never dead
    can_die: bool = False  # a conv ZeroConv can stand in for


@dataclass
class Connection:
    index: int
    source: int  # record index of the producer
    consumer: int  # index into ConnectionGraph.consumers
    positions: np.ndarray  # input positions of the consumer

    @property
    def width(self) -> int:
        return len(self.positions)


class ConnectionGraph:
    """The connections of a traced model, their exact cost and the surgery that removes them."""

    def __init__(self, graph: ChannelGraph, cost: CostModel | None = None):
        self.graph = graph
        self.cost = cost or CostModel(graph)
        recs = graph.records
        uf = graph.uf
        # producer of every channel id root: (record, position); ambiguous roots map to -1
        owner: dict[int, int] = {}
        for ri, r in enumerate(recs):
            if r.kind.has_filters and r.out_ids is not None:
                for i in r.out_ids.tolist():
                    root = uf.find(i)
                    owner[root] = ri if owner.get(root, ri) == ri else -1
        gm = graph.gm
        nodes = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
        modules = dict(gm.named_modules())
        norm_index = {r.name: ri for ri, r in enumerate(recs) if r.kind == LayerKind.NORM}
        candidates: list[tuple[int, np.ndarray]] = []
        for ri, r in enumerate(recs):
            if not r.kind.has_filters or r.in_ids is None:
                continue
            if r.kind == LayerKind.CONV and r.mode != "dense":
                continue
            src = np.array([owner.get(uf.find(i), -2) for i in r.in_ids.tolist()], dtype=np.int64)
            if (src < 0).any() or r.name not in nodes or len(set(src.tolist())) < 1:
                continue
            candidates.append((ri, src))
        multi = {ri for ri, src in candidates if len(set(src.tolist())) >= 2}
        multi_sources = {int(s) for ri, src in candidates if ri in multi for s in set(src.tolist())}
        # single-source consumers join when both their source and their output are dense-block channels
        # (the first layer of a block); a bottleneck's second conv does not
        chosen = [
            (ri, src)
            for ri, src in candidates
            if ri in multi or (ri in multi_sources and set(src.tolist()) <= multi_sources)
        ]
        if not multi:
            raise LcpError(
                f"{type(graph.model).__name__} has no dense connections (no conv or linear reads a "
                "concat of several producers): connection pruning needs a DenseNet-style model"
            )
        self.consumers: list[Consumer] = []
        self.connections: list[Connection] = []
        self.consumer_of_record: dict[int, int] = {}
        private_norms: set[int] = set()
        blocks: dict[int, int] = {}
        for ri, src in chosen:
            r = recs[ri]
            node = nodes[r.name]
            norm, at, dim = self._private_norm(node, modules, norm_index, len(src))
            if norm is not None:
                private_norms.add(norm)
            first = int(min(src.tolist()))
            block = blocks.setdefault(first, len(blocks))
            m = modules[r.name]
            can_die = r.kind == LayerKind.CONV and isinstance(m, nn.Conv2d) and not isinstance(m.padding, str)
            c = Consumer(ri, r.name, r.kind, norm, at, dim if norm is None else 1, block, can_die=can_die)
            ci = len(self.consumers)
            self.consumer_of_record[ri] = ci
            order = sorted(set(src.tolist()))
            for s in order:
                k = len(self.connections)
                self.connections.append(Connection(k, int(s), ci, np.nonzero(src == s)[0]))
                c.sources.append(k)
            self.consumers.append(c)
        # a consumer is pinned if anything but connections reads its output
        read_by_conn = {cn.source for cn in self.connections}
        consumer_records = set(self.consumer_of_record)
        other_roots: set[int] = set()  # ids read by anything but a consumer's input or its private norm
        for rj, other in enumerate(recs):
            if rj in private_norms:
                continue
            for axis, ids in other.axes():
                if (axis == "in" and rj in consumer_records) or (axis == "out" and other.kind.has_filters):
                    continue
                other_roots.update(uf.find(i) for i in ids.tolist())
        for c in self.consumers:
            r = recs[c.record]
            if c.record not in read_by_conn or not c.can_die:
                c.pinned = True
            elif any(uf.is_frozen(i) or uf.find(i) in other_roots for i in r.out_ids.tolist()):
                c.pinned = True
        self.n = len(self.connections)
        self.src = np.array([cn.source for cn in self.connections])
        self.dst = np.array([cn.consumer for cn in self.connections])
        self.width = np.array([cn.width for cn in self.connections], dtype=np.int64)
        self._prepare_cost()

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _private_norm(
        node: fx.Node, modules: dict[str, nn.Module], norm_index: dict[str, int], n_in: int
    ) -> tuple[int | None, str, int]:
        """(norm record, node that gets the gather, channel dim) for a consumer node."""
        dim = -1 if isinstance(modules[node.target], nn.Linear) else 1
        cur = node.args[0] if node.args else None
        while isinstance(cur, fx.Node) and len(cur.users) == 1:
            if cur.op == "call_module" and cur.target in norm_index:
                m = modules[cur.target]
                if getattr(m, "num_features", n_in) == n_in:
                    return norm_index[cur.target], cur.name, 1
                break
            name = cur.target if cur.op == "call_method" else getattr(cur.target, "__name__", "")
            if cur.op == "call_module":
                m = modules[cur.target]
                ok = isinstance(
                    m,
                    (
                        nn.ReLU,
                        nn.ReLU6,
                        nn.SiLU,
                        nn.GELU,
                        nn.Identity,
                        nn.Dropout,
                        nn.Flatten,
                        nn.AdaptiveAvgPool2d,
                        nn.AvgPool2d,
                    ),
                )
            else:
                ok = name in _PASS_FUNCS
            if not ok or not cur.args:
                break
            cur = cur.args[0]
        return None, node.name, dim

    def _prepare_cost(self) -> None:
        cost, recs = self.cost, self.graph.records
        self.full_cost = []  # (macs, params) of consumer + its private norm, all kept
        self.unit_cost = []  # (macs, params) per kept input position
        for c in self.consumers:
            r = recs[c.record]
            n_out, n_in = len(r.out_ids), len(r.in_ids)
            m1, p1 = record_cost(r, n_out, 1, 0)
            m0, p0 = record_cost(r, n_out, 0, 0)  # bias only
            mf, pf = record_cost(r, n_out, n_in, 0)
            npar = 0
            if c.norm is not None:
                npar = cost.norm_params[c.norm]
            self.unit_cost.append((m1 - m0, p1 - p0 + npar))
            self.full_cost.append((mf, pf + npar * n_in, m0, p0))
        self.macs_base, self.params_base = cost.macs_base, cost.params_base

    # ------------------------------------------------------------------ queries
    def full(self) -> np.ndarray:
        """All connections kept."""
        return np.ones(self.n, dtype=bool)

    def alive(self, keep: np.ndarray) -> np.ndarray:
        """Which consumers still compute something read by someone (dead ones are replaced by ZeroConv)."""
        keep = np.asarray(keep, dtype=bool)
        alive = np.array([c.pinned for c in self.consumers])
        read = np.zeros(len(self.consumers), dtype=bool)  # read by an alive consumer through a kept connection
        for ci in range(len(self.consumers) - 1, -1, -1):
            if not (alive[ci] or read[ci]):
                continue
            alive[ci] = True
            for k in self.consumers[ci].sources:
                if keep[k]:
                    sc = self.consumer_of_record.get(int(self.src[k]))
                    if sc is not None:
                        read[sc] = True
        return alive

    def check(self, keep: np.ndarray) -> np.ndarray:
        """Validate ``keep`` (bool per connection); returns the alive consumers."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (self.n,):
            raise LcpError(f"a connection mask needs {self.n} entries, got shape {keep.shape}")
        alive = self.alive(keep)
        for ci, c in enumerate(self.consumers):
            if alive[ci] and not keep[c.sources].any():
                raise LcpError(f"{c.name} is still read but would keep none of its input connections")
        return alive

    def evaluate(self, keep: np.ndarray, alive: np.ndarray | None = None) -> tuple[int, int]:
        """Exact (MACs, params) of the network with connections ``keep`` (equals count_macs/count_params)."""
        keep = np.asarray(keep, dtype=bool)
        if alive is None:
            alive = self.alive(keep)
        kept_w = np.bincount(self.dst, weights=keep * self.width, minlength=len(self.consumers))
        macs, params = self.macs_base, self.params_base
        for ci in range(len(self.consumers)):
            mf, pf, m0, p0 = self.full_cost[ci]
            if alive[ci]:
                mu, pu = self.unit_cost[ci]
                macs += m0 + mu * int(kept_w[ci]) - mf
                params += p0 + pu * int(kept_w[ci]) - pf
            else:
                macs -= mf
                params -= pf
        return int(macs), int(params)

    def slice_l1(self) -> np.ndarray:
        """Per connection, the mean absolute weight of the consumer's input slice that reads it (CondenseNet's
        importance of a connection: the L1 norm of that slice divided by its size, so slices of different widths
        and consumers compare)."""
        modules = dict(self.graph.gm.named_modules())
        out = np.zeros(self.n)
        for c in self.consumers:
            w = modules[c.name].weight.detach().abs()
            for k in c.sources:
                out[k] = float(w[:, torch.as_tensor(self.connections[k].positions)].mean())
        return out

    def value(self, keep: np.ndarray, metric: str) -> int:
        m, p = self.evaluate(keep)
        return m if metric == "macs" else p

    def base(self, metric: str) -> int:
        return self.macs_base if metric == "macs" else self.params_base

    def minimal(self, metric: str = "macs") -> np.ndarray:
        """The cheapest valid mask (``connection_budget.minimal_mask``)."""
        return minimal_mask(self, metric)

    def adjacency(self, keep: np.ndarray) -> list[dict[str, Any]]:
        """Per block: sources, consumers and the lower-triangular boolean matrix keep[c][s]."""
        keep = np.asarray(keep, dtype=bool)
        recs = self.graph.records
        out = []
        for b in sorted({c.block for c in self.consumers}):
            cons = [ci for ci, c in enumerate(self.consumers) if c.block == b]
            srcs = sorted({int(self.src[k]) for ci in cons for k in self.consumers[ci].sources})
            col = {s: j for j, s in enumerate(srcs)}
            mat = [[False] * len(srcs) for _ in cons]
            for i, ci in enumerate(cons):
                for k in self.consumers[ci].sources:
                    mat[i][col[int(self.src[k])]] = bool(keep[k])
            out.append(
                {
                    "block": b,
                    "sources": [recs[s].name for s in srcs],
                    "consumers": [self.consumers[ci].name for ci in cons],
                    "keep": mat,
                }
            )
        return out

    def names(self, keep: np.ndarray) -> list[list[str]]:
        """The removed connections as [consumer, source] module names (what channels.json stores)."""
        recs = self.graph.records
        return [
            [self.consumers[int(self.dst[k])].name, recs[int(self.src[k])].name]
            for k in np.nonzero(~np.asarray(keep, dtype=bool))[0].tolist()
        ]

    def from_names(self, removed: Sequence[Sequence[str]]) -> np.ndarray:
        """The mask that removes the [consumer, source] pairs in ``removed``."""
        if not isinstance(removed, (list, tuple)):
            raise LcpError("removed connections must be a list of [consumer, source] names")
        recs = self.graph.records
        index = {(self.consumers[int(self.dst[k])].name, recs[int(self.src[k])].name): k for k in range(self.n)}
        keep = self.full()
        for pair in removed:
            named = isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(n, str) for n in pair)
            k = index.get(tuple(pair)) if named else None
            if k is None:
                raise LcpError(f"connection {pair!r} does not exist in {type(self.graph.model).__name__}")
            keep[k] = False
        return keep

    def summary(self) -> str:
        blocks = len({c.block for c in self.consumers})
        return (
            f"{self.n} connections into {len(self.consumers)} consumers in {blocks} blocks "
            f"({sum(not c.pinned for c in self.consumers)} consumers can be dropped)"
        )

    # ------------------------------------------------------------------ budget (lcp.engine.connection_budget)
    def project(
        self, keep: np.ndarray, priority: np.ndarray, *, budget: float, metric: str = "macs", fill: bool = True
    ) -> np.ndarray:
        """Make ``keep`` valid and within ``budget`` (``connection_budget.project_to_budget``)."""
        return project_to_budget(self, keep, priority, budget=budget, metric=metric, fill=fill)

    # ------------------------------------------------------------------ surgery (lcp.engine.connection_surgery)
    def apply(self, keep: np.ndarray) -> fx.GraphModule:
        """A pruned copy of the model (GraphModule) without the dropped connections; the original is untouched."""
        return apply_connections(self, keep)

    def masked_model(self, keep: np.ndarray) -> tuple[nn.Module, list]:
        """A float64 copy of the original whose consumers see dropped connections as zeros."""
        return masked_connections(self, keep)

    def verify(self, keep: np.ndarray, pruned: nn.Module, *, rtol: float = 1e-6, seed: int = 0) -> Verification:
        """Compare ``pruned`` with the masked original in float64 on random input."""
        return verify_connections(self, keep, pruned, rtol=rtol, seed=seed)

    def prune(self, keep: np.ndarray, *, check_cost: bool = True) -> tuple[fx.GraphModule, Verification]:
        """Build and verify; refuses (LcpError) when the result differs from the masked original or the cost model."""
        return prune_connections(self, keep, check_cost=check_cost)


def build(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor]) -> ConnectionGraph:
    """Trace ``model`` and find its connections (refuses models without dense connections)."""
    return ConnectionGraph(build_graph(model, example_inputs))

"""Channel-dependency graph: which channels of a network must be removed together.

Every channel of every tensor gets an integer id; the traced graph says how ids flow (see ``lcp/ops.py``):
convs and linears consume their input ids and produce fresh ids, per-channel ops pass ids through,
elementwise ops between tensors unite ids position by position, concat/split join and cut id lists.
A connected set of ids is a *channel unit*: removing it removes every producer filter, norm channel and
consumer input slice in it. Units with the same producer modules form a *group* (the thing that carries
LeGR's per-layer ``(alpha, kappa)``). Any op the engine does not model freezes the ids it touches.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from lcp.errors import LcpError

# --------------------------------------------------------------------------------------------------------------
# Ids, union-find and channel-carrying values


class UnionFind:
    """Union-find over dense integer ids, with a frozen flag and reason per root."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.frozen: dict[int, str] = {}  # id -> reason (reasons are merged on union)

    def new(self, n: int, frozen: str | None = None) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        ids = np.arange(start, start + n, dtype=np.int64)
        if frozen:
            for i in range(start, start + n):
                self.frozen[i] = frozen
        return ids

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra == rb:
            return
        if ra > rb:
            ra, rb = rb, ra
        self.parent[rb] = ra
        reason = self.frozen.pop(rb, None)
        if reason is not None and ra not in self.frozen:
            self.frozen[ra] = reason

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                self.union(x, y)

    def freeze(self, ids: np.ndarray, reason: str) -> None:
        for i in ids.tolist():
            r = self.find(i)
            self.frozen.setdefault(r, reason)

    def is_frozen(self, i: int) -> str | None:
        return self.frozen.get(self.find(i))


@dataclass
class Chan:
    """A tensor value whose dimension ``dim`` carries channel ids ``ids`` (one per position)."""

    dim: int
    ids: np.ndarray


# --------------------------------------------------------------------------------------------------------------
# What the graph records about each module (or graph node) that holds channel-indexed state


@dataclass
class Record:
    """Channel-indexed state of one module: its output/input ids and what its cost depends on.

    kind: ``conv``, ``linear``, ``norm`` (per-channel params), ``pad`` (ShortcutA channel padding) or
    ``split`` (a split with constant sizes: its pieces must keep at least one channel and its sizes are
    rewritten in the pruned graph).
    """

    name: str
    kind: str
    out_ids: np.ndarray | None = None
    in_ids: np.ndarray | None = None
    mode: str = "dense"  # conv: dense | depthwise | grouped
    groups: int = 1
    kernel: int = 1  # number of kernel elements (kh * kw)
    spatial: int = 0  # output positions per sample, summed over calls
    bias: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def axes(self) -> list[tuple[str, np.ndarray]]:
        return [(a, ids) for a, ids in (("out", self.out_ids), ("in", self.in_ids)) if ids is not None]


@dataclass
class Unit:
    """A set of channels that are removed together."""

    index: int
    root: int
    group: int = -1
    frozen: str | None = None
    producers: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (record index, out positions)
    members: list[tuple[int, str, int]] = field(default_factory=list)  # (record index, axis, count)
    key: str = ""  # stable name: "<module>:<axis>:<position>" of its first member

    @property
    def prunable(self) -> bool:
        return self.frozen is None and bool(self.producers)


@dataclass
class Group:
    """Units that share the same producer modules; they share one (alpha, kappa)."""

    index: int
    name: str
    producers: tuple[str, ...]
    units: list[int] = field(default_factory=list)


@dataclass
class Frozen:
    """One op that froze channels, and why."""

    where: str
    op: str
    reason: str


class ChannelGraph:
    """The channel units, groups and module records of one traced model (see module docstring)."""

    def __init__(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], gm: fx.GraphModule,
                 records: list[Record], uf: UnionFind, frozen_ops: list[Frozen]):
        self.model = model
        self.example_inputs = example_inputs
        self.gm = gm
        self.records = records
        self.record_index = {r.name: i for i, r in enumerate(records)}
        self.uf = uf
        self.frozen_ops = frozen_ops
        self._build_units()

    # ------------------------------------------------------------------ construction helpers
    def _build_units(self) -> None:
        uf = self.uf
        root_to_unit: dict[int, int] = {}
        units: list[Unit] = []
        # unit index per position for each record axis, built once (used by cost, surgery, verification)
        self.axis_units: dict[tuple[int, str], np.ndarray] = {}
        for ri, rec in enumerate(self.records):
            for axis, ids in rec.axes():
                roots = np.fromiter((uf.find(i) for i in ids.tolist()), dtype=np.int64, count=len(ids))
                idx = np.empty(len(ids), dtype=np.int64)
                for p, root in enumerate(roots.tolist()):
                    u = root_to_unit.get(root)
                    if u is None:
                        u = len(units)
                        root_to_unit[root] = u
                        units.append(Unit(index=u, root=root, frozen=uf.frozen.get(root),
                                          key=f"{rec.name}:{axis}:{p}"))
                    idx[p] = u
                self.axis_units[(ri, axis)] = idx
                counts = np.bincount(idx, minlength=len(units))
                for u in np.nonzero(counts)[0].tolist():
                    units[u].members.append((ri, axis, int(counts[u])))
                if axis == "out" and rec.kind in ("conv", "linear"):
                    order = np.argsort(idx, kind="stable")
                    bounds = np.searchsorted(idx[order], np.arange(len(units) + 1))
                    for u in np.nonzero(counts)[0].tolist():
                        units[u].producers.append((ri, order[bounds[u]:bounds[u + 1]]))
        self.units = units
        # groups: units with the same producer modules, in order of first appearance
        groups: dict[tuple[str, ...], Group] = {}
        for unit in units:
            if not unit.prunable:
                continue
            names = tuple(sorted({self.records[ri].name for ri, _ in unit.producers},
                                 key=lambda n: self.record_index[n]))
            g = groups.get(names)
            if g is None:
                label = names[0] if len(names) == 1 else f"{names[0]}+{len(names) - 1}"
                g = groups[names] = Group(index=len(groups), name=label, producers=names)
            g.units.append(unit.index)
            unit.group = g.index
        self.groups = list(groups.values())

    # ------------------------------------------------------------------ queries
    @property
    def prunable_units(self) -> list[int]:
        return [u.index for u in self.units if u.prunable]

    def kept_positions(self, removed: np.ndarray, ri: int, axis: str) -> np.ndarray:
        """Positions of record ``ri`` on ``axis`` that survive when units with ``removed[u]`` are gone."""
        return np.nonzero(~removed[self.axis_units[(ri, axis)]])[0]

    def summary(self) -> str:
        n_prunable = sum(u.prunable for u in self.units)
        return (f"{len(self.records)} modules, {len(self.units)} channel units "
                f"({n_prunable} prunable) in {len(self.groups)} groups; "
                f"{len(self.frozen_ops)} ops froze channels")


# --------------------------------------------------------------------------------------------------------------
# Tracing


def _leaf_types() -> tuple[type, ...]:
    from lcp.engine import rules as ops
    return ops.leaf_types()


#: timm no-trace modules whose forward is plain tensor code fx traces fine (timm marks NormFreeBlock for its
#: feature extractor): lcp traces through them so their convs are prunable
_TRACE_THROUGH = ("NormFreeBlock",)


class LcpTracer(fx.Tracer):
    """fx tracer that keeps torch.nn built-ins, timm's no-trace modules and lcp's known modules as leaves."""

    def __init__(self) -> None:
        autowrap: tuple = ()
        try:
            from timm.layers import _fx as timm_fx
            self._timm_leaves = tuple(m for m in timm_fx.get_notrace_modules() if m.__name__ not in _TRACE_THROUGH)
            autowrap = tuple(f for f in timm_fx.get_notrace_functions() if callable(f))
        except Exception:  # timm missing or changed: plain fx rules
            self._timm_leaves = ()
        super().__init__(autowrap_functions=autowrap)
        self._lcp_leaves = _leaf_types()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, self._lcp_leaves) or isinstance(m, self._timm_leaves):
            return True
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``; a model that does not trace is refused with the reason."""
    tracer = LcpTracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises many kinds; all mean "cannot see the graph"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LcpError(f"cannot trace {type(model).__name__} with torch.fx ({type(e).__name__}: {msg}); "
                       "lcp needs a traceable model (mark untraceable submodules with "
                       "timm.layers.register_notrace_module)") from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def build_graph(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
                ignore: Sequence[str] = ()) -> ChannelGraph:
    """Trace ``model`` on ``example_inputs`` and derive its channel units and groups.

    ``ignore``: glob patterns of module names (``"head.*"``, ``"*.se.*"``) whose output channels are kept.
    """
    from lcp.engine.rules import Propagator

    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    was_training = model.training
    model.eval()
    try:
        gm = trace(model)
        with torch.no_grad():
            try:
                ShapeProp(gm).propagate(*example_inputs)
            except Exception as e:
                raise LcpError(f"the model does not run on the example input of shape "
                               f"{[tuple(x.shape) for x in example_inputs]}: {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}") from None
        prop = Propagator(gm)
        prop.run()
        for rec in prop.records:
            if rec.kind in ("conv", "linear") and any(fnmatch.fnmatchcase(rec.name, p) for p in ignore):
                prop.uf.freeze(rec.out_ids, f"ignored ({rec.name})")
                prop.frozen_ops.append(Frozen(where=rec.name, op=rec.name, reason="matched an --ignore pattern"))
    finally:
        model.train(was_training)
    return ChannelGraph(model, example_inputs, gm, prop.records, prop.uf, prop.frozen_ops)


def floor_keep(n: int, min_ratio: float = 0.1, min_channels: int = 2) -> int:
    """Default per-group floor: keep at least max(ceil(min_ratio * n), min_channels) of n units (at most n)."""
    return min(n, max(math.ceil(min_ratio * n - 1e-9), min_channels))

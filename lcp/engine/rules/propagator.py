"""The driver: walk a shape-propagated graph once and map every node to its channel ids through the rules.

``Propagator`` maps every node to a value: a ``Chan`` (a tensor whose dimension ``dim`` carries channel ids), a
tuple of values (split, multi-output modules), or ``None`` (not a tensor, or a tensor whose channels lcp does not
track, such as a parameter read in ``forward``). The rule for each node comes from a ``RuleTable`` (module rules
by type, function rules by op name); whatever has no rule freezes the ids it receives: the result is always a
valid network.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch.fx as fx
from torch import nn

from lcp.engine.rules.registry import RULES, RuleTable
from lcp.engine.types import Chan, Frozen, LayerKind, Record, UnionFind


def op_name(node: fx.Node) -> str:
    """The name function rules are keyed by: ``torch.relu``, ``F.relu`` and ``x.relu()`` are all ``"relu"``."""
    t = node.target
    if node.op == "call_method":
        return str(t)
    if t in (operator.add, operator.iadd):
        return "add"
    if t in (operator.mul, operator.imul):
        return "mul"
    if t in (operator.sub, operator.isub):
        return "sub"
    if t in (operator.truediv, operator.itruediv):
        return "div"
    if t is operator.getitem:
        return "getitem"
    if t is getattr:
        return "getattr"
    return getattr(t, "__name__", str(t))


def meta_shapes(node: Any) -> Any:
    """Shapes from ShapeProp: a tuple for a tensor, a list of those for a tuple of tensors, None otherwise."""
    if not isinstance(node, fx.Node):
        return None
    tm = node.meta.get("tensor_meta")

    def conv(m: Any) -> Any:
        if m is None:
            return None
        if hasattr(m, "shape"):
            return tuple(int(s) for s in m.shape)
        if isinstance(m, (list, tuple)):
            return [conv(x) for x in m]
        return None

    return conv(tm)


def flatten_args(x: Any) -> list[Any]:
    """The leaves of nested args / kwargs."""
    if isinstance(x, (list, tuple)):
        return [y for a in x for y in flatten_args(a)]
    if isinstance(x, dict):
        return [y for a in x.values() for y in flatten_args(a)]
    return [x]


def norm_dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} ({node.target})"
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)


class Propagator:
    """Walks a shape-propagated GraphModule once and records channel ids, module records and frozen ops.

    Rules use its helpers: ``unknown`` (freeze the inputs), ``passthrough`` (ids pass unchanged), ``record``
    (channel-indexed state that cost and surgery handle), ``uf`` (new ids, unions) and ``shape`` / ``val``.
    """

    def __init__(self, gm: fx.GraphModule, rules: RuleTable = RULES, batch: int = 1):
        self.gm = gm
        self.batch = max(1, batch)  # the model's samples (``graph.input_batch``): costs are counted per sample
        self.rules = rules
        self.modules = dict(gm.named_modules())
        self.uf = UnionFind()
        self.records: list[Record] = []
        self._record_of: dict[str, Record] = {}
        self.frozen_ops: list[Frozen] = []
        self.values: dict[fx.Node, Any] = {}

    # ------------------------------------------------------------------ helpers for rules
    def freeze(self, node: fx.Node, value: Any, reason: str) -> None:
        """Freeze every id in ``value`` (nested values allowed) and list ``node`` among the frozen ops."""
        hit = False
        for v in flatten_args(value):
            if isinstance(v, Chan) and len(v.ids):
                self.uf.freeze(v.ids, reason)
                hit = True
        if hit:
            self.frozen_ops.append(Frozen(where=node.name, op=_describe(node, self.modules), reason=reason))

    def fresh_like(self, node: fx.Node, shape: Any, frozen: str | None) -> Any:
        """Fresh ids for an op's output(s): channel dim 1 for tensors of rank >= 2."""
        if isinstance(shape, list):
            return tuple(self.fresh_like(node, s, frozen) for s in shape)
        if isinstance(shape, tuple) and len(shape) >= 2:
            return Chan(1, self.uf.new(shape[1], frozen=frozen or f"output of untracked op {node.name}"))
        return None

    def unknown(self, node: fx.Node, reason: str) -> None:
        """Freeze everything flowing into ``node``; its outputs are untracked tensors."""
        self.freeze(node, [self.values.get(a) for a in node.all_input_nodes], reason)
        return None

    def record(self, name: str, kind: LayerKind | str, **kw: Any) -> Record:
        """Add the channel-indexed state of ``name`` (see ``Record``); ``get_record(name)`` finds it again."""
        rec = Record(name=name, kind=kind, **kw)
        self.records.append(rec)
        self._record_of[name] = rec
        return rec

    def get_record(self, name: str) -> Record | None:
        return self._record_of.get(name)

    def val(self, a: Any) -> Any:
        """The value of an argument (``None`` for constants)."""
        return self.values.get(a) if isinstance(a, fx.Node) else None

    def shape(self, node: Any) -> Any:
        """Output shape of ``node`` (see ``meta_shapes``)."""
        return meta_shapes(node)

    def per_sample(self, shape: Any, positions: int) -> int:
        """``positions`` per item of an op's leading dim, as positions per model sample: a layer that sees
        more items than the model has samples (frames folded into the batch, a detector's images or regions)
        costs that many times more per sample."""
        items = shape[0] if isinstance(shape, tuple) and len(shape) >= 2 and isinstance(shape[0], int) else self.batch
        return max(1, round(positions * items / self.batch))

    def passthrough(self, node: fx.Node, x: Any) -> Any:
        """The ids of ``x`` pass unchanged (the op is per channel and keeps the channel dimension)."""
        if isinstance(x, Chan):
            shape = meta_shapes(node)
            in_shape = meta_shapes(node.args[0])
            if (
                isinstance(shape, tuple)
                and in_shape is not None
                and len(shape) == len(in_shape)
                and shape[x.dim] == len(x.ids)
            ):
                return x
            return self.unknown(node, "changes the channel dimension")
        if x is None:
            return None
        return self.unknown(node, "unexpected input")

    def flatten(self, node: fx.Node, x: Any, start: int, end: int) -> Any:
        """Dims ``start..end`` of the first input merged into one: each channel id becomes a block of ids."""
        in_shape = meta_shapes(node.args[0])
        if not isinstance(x, Chan) or not isinstance(in_shape, tuple):
            return self.unknown(node, "flatten of an untracked tensor")
        r = len(in_shape)
        s, e = norm_dim(start, r), norm_dim(end, r)
        if x.dim < s:
            return x
        if x.dim > e:
            return Chan(x.dim - (e - s), x.ids)
        inner = int(math.prod(in_shape[x.dim + 1 : e + 1]))
        outer = int(math.prod(in_shape[s : x.dim]))
        return Chan(s, np.tile(np.repeat(x.ids, inner), outer))

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                out = self.fresh_like(node, meta_shapes(node), frozen="model input")
            elif node.op == "get_attr":
                out = None  # parameters/buffers read in forward: untracked tensors
            elif node.op == "output":
                self.freeze(node, [self.values.get(a) for a in node.all_input_nodes], "model output")
                # the output is not an op that froze anything worth listing
                if self.frozen_ops and self.frozen_ops[-1].where == node.name:
                    self.frozen_ops.pop()
                continue
            elif node.op == "call_module":
                out = self.module(node, self.modules[node.target])
            else:
                out = self.function(node, op_name(node))
            self.values[node] = out

    def module(self, node: fx.Node, m: nn.Module) -> Any:
        rule = self.rules.module_rule(m)
        if rule is None:
            return self.unknown(node, f"module {type(m).__name__} is not modelled")
        return rule(self, node, m, self.val(node.args[0]) if node.args else None)

    def function(self, node: fx.Node, name: str) -> Any:
        args = node.args
        tensors = [a for a in flatten_args((args, node.kwargs)) if isinstance(a, fx.Node)]
        if not any(isinstance(self.values.get(a), (Chan, tuple)) for a in tensors):
            return None  # built from parameters, constants or shapes only: untracked
        rule = self.rules.function_rule(name)
        if rule is None:
            return self.unknown(node, f"op {name} is not modelled")
        return rule(self, node, name, self.val(args[0]) if args else None)

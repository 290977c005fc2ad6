"""Depth units: a residual branch disappears when the walk empties its inner channel group.

In ``y = s + tail(consumer(inner(x)))`` (a ResNet block's ``bn2(conv2(relu(bn1(conv1(x)))))``, a MobileNetV2
inverted residual's expansion, a bottleneck's first 1x1), the *inner group* is a channel group that only the
branch reads: conv1's outputs (with bn1 and, in MobileNetV2, the depthwise conv that passes them through).
Removing every unit of it leaves the consumer (conv2) without inputs, so the consumer outputs its bias (or
zeros) everywhere. The cost model already prices that exactly (the inner group's records and the consumer's
weights cost 0 at width 0), and the masked original computes exactly that, so verification needs nothing new.
Surgery replaces the consumer by :class:`ZeroInput` (its bias, shaped from the stream ``s``) and drops what only
fed it: the branch's convs are gone and the network is one block shallower (what follows the consumer in the
branch, a norm or a bottleneck's last 1x1, still runs on the constant map and stays in the cost).

:func:`depth_units` finds the groups for which this is exact: one conv or linear consumer, every other module
axis touching the group holding that group only, a single-use path from the consumer to an add whose other
operand (the stream) has the add's shape and the consumer's batch and spatial size, and nothing with parameters
or multiply-accumulates dying with the branch that the cost model does not already zero. A walk empties such a
group only when the graph allows it (``ChannelGraph.allow_depth``); a group at its floor is then removed whole
once the walk reaches its highest remaining score, so blocks and channels compete in one global ranking.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from lcp.engine.graph import ChannelGraph, retrace
from lcp.engine.layers import delete_module, replace_module
from lcp.engine.types import LayerKind
from lcp.errors import LcpError

_ADDS = {operator.add, operator.iadd, torch.add, "add", "add_", "__add__", "__iadd__"}
#: call_function / call_method targets whose work FlopCounterMode counts (a branch holding one outside the
#: dying part's records is not a depth unit: the cost model would not see it go)
_PRODUCTS = {
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "matmul",
    "mm",
    "bmm",
    "addmm",
    "baddbmm",
    "einsum",
    "scaled_dot_product_attention",
    "multi_head_attention_forward",
    "__matmul__",
}


@dataclass(frozen=True)
class DepthUnit:
    """A group whose removal removes a residual branch: its consumer, the path to the add, what dies."""

    group: int
    consumer: str  # module name of the conv / linear that reads the group
    add: str  # fx node name of the residual add in the graph it was found in
    dying: tuple[str, ...]  # modules that only fed the consumer (deleted with the branch)


class ZeroInput(nn.Module):
    """Stands in for a conv or linear whose inputs were all removed: its bias (or zeros) with the batch and
    spatial (token) shape of the tensor it is given (the residual stream its branch is added to)."""

    def __init__(self, out_channels: int, bias: torch.Tensor | None, channel_dim: int):
        super().__init__()
        self.out_channels, self.channel_dim = out_channels, channel_dim
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, like: torch.Tensor) -> torch.Tensor:
        size = list(like.shape)
        size[self.channel_dim] = self.out_channels
        out = like.new_zeros(size)
        if self.bias is None:
            return out
        shape = [1] * like.dim()
        shape[self.channel_dim] = -1
        return out + self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, bias={self.bias is not None}"


def _target_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _ADDS
    return node.op == "call_method" and node.target in _ADDS


def _is_product(node: fx.Node) -> bool:
    return node.op in ("call_function", "call_method") and _target_name(node) in _PRODUCTS


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _same_but_channels(a: tuple[int, ...] | None, b: tuple[int, ...] | None, dim: int) -> bool:
    """Shapes ``a`` and ``b`` are known and equal except along the channel ``dim``."""
    if a is None or b is None or len(a) != len(b):
        return False
    d = dim % len(a)
    return all(x == y for i, (x, y) in enumerate(zip(a, b)) if i != d)


def find_residual_add(consumer: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(add node, stream operand) reached from ``consumer`` along single-use nodes, or None."""
    node = consumer
    for _ in range(32):  # a branch's tail is short: norm, activation, a 1x1 conv, layer scale, drop path
        users = list(node.users)
        if len(users) != 1:
            return None
        nxt = users[0]
        if _is_add(nxt):
            tensors = [a for a in nxt.args if isinstance(a, fx.Node)]
            if len(tensors) != 2 or tensors[0] is tensors[1]:
                return None
            stream = tensors[1] if tensors[0] is node else tensors[0]
            return nxt, stream
        node = nxt
    return None


def _dying(gm: fx.GraphModule, consumer: fx.Node) -> set[fx.Node]:
    """Nodes left without users once ``consumer`` stops reading its input."""
    dead: set[fx.Node] = set()
    for node in reversed(list(gm.graph.nodes)):
        if node.op in ("placeholder", "output") or node is consumer or not node.users:
            continue
        if all(u in dead or u is consumer for u in node.users):
            dead.add(node)
    return dead


def depth_units(graph: ChannelGraph) -> dict[int, DepthUnit]:
    """The groups whose emptying removes a residual branch exactly (see the module docstring), by group index;
    found once per graph."""
    if graph.depth_cache is None:
        graph.depth_cache = _find_units(graph)
    return graph.depth_cache


def allow_depth(graph: ChannelGraph, allow: bool = True) -> int:
    """Let every walk on ``graph`` empty its depth units' groups (remove whole residual branches), except groups
    capped by ``limit_removal``; returns how many it may empty."""
    graph.depth[:] = False
    if allow:
        for g in depth_units(graph):
            graph.depth[g] = graph.max_removal[g] >= 1.0
    return int(graph.depth.sum())


def _find_units(graph: ChannelGraph) -> dict[int, DepthUnit]:
    gm = graph.gm
    modules = dict(graph.model.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    by_target = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
    records = graph.records
    out: dict[int, DepthUnit] = {}
    for g in graph.groups:
        units = set(g.units)
        touching: dict[int, set[str]] = {}
        for u in g.units:
            for ri, axis, _ in graph.units[u].members:
                touching.setdefault(ri, set()).add(axis)
        consumers = [ri for ri, axes in touching.items() if axes == {"in"}]
        if len(consumers) != 1 or records[consumers[0]].kind not in (LayerKind.CONV, LayerKind.LINEAR):
            continue
        ci = consumers[0]
        if not set(graph.axis_units[(ci, "in")].tolist()) <= units:  # it reads other channels too (a concat)
            continue
        inside = [ri for ri in touching if ri != ci]
        # every other module's axis that touches the group holds nothing else (the module dies with the group)
        if not all(set(graph.axis_units[(ri, axis)].tolist()) <= units for ri in inside for axis in touching[ri]):
            continue
        cname = records[ci].name
        cnode = by_target.get(cname)
        if cnode is None or calls[cname] != 1:  # a module called twice is shared, not a branch's
            continue
        found = find_residual_add(cnode)
        if found is None:
            continue
        add, stream = found
        dim = 1 if records[ci].kind == LayerKind.CONV else -1
        if not _same_but_channels(_shape(cnode), _shape(add), dim) or _shape(stream) != _shape(add):
            continue
        dead = _dying(gm, cnode)
        inside_names = {records[ri].name for ri in inside}
        ok = bool(dead)
        for node in dead:
            if node.op == "call_module":
                m = modules.get(node.target)
                has_params = m is not None and any(True for _ in m.parameters())
                if has_params and node.target not in inside_names:
                    ok = False
            elif node.op == "get_attr" or _is_product(node):
                ok = False
        if ok and inside_names <= {n.target for n in dead if n.op == "call_module"}:
            out[g.index] = DepthUnit(g.index, cname, add.name, tuple(sorted(inside_names)))
    return out


def remove_branches(model: nn.Module, consumers: dict[str, int], rules, channel_dims: dict[str, int]) -> fx.GraphModule:
    """Re-trace ``model`` (already cut in width) and replace each consumer named in ``consumers`` (name -> kept
    outputs) by :class:`ZeroInput` fed with its branch's stream; what only fed it is dropped."""
    gm = retrace(model, rules)
    nodes = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
    for name, n_out in consumers.items():
        node = nodes[name]
        found = find_residual_add(node)
        if found is None:
            raise LcpError(f"internal: the residual add after {name} was not found when removing its branch")
        add, stream = found
        chain, n = [], node
        while n is not add:  # consumer .. the add's operand: moved after the stream, in order
            chain.append(n)
            n = next(iter(n.users))
        for n in chain:
            add.prepend(n)
        old = gm.get_submodule(name)
        bias = getattr(old, "bias", None)
        zero = ZeroInput(n_out, bias if isinstance(bias, torch.Tensor) else None, channel_dims[name])
        zero.train(old.training)
        replace_module(gm, name, zero)
        node.args = (stream,)
        node.kwargs = {}
    called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    gm.graph.eliminate_dead_code()
    gone = called - {n.target for n in gm.graph.nodes if n.op == "call_module"}
    for name in sorted(gone, key=lambda n: -n.count(".")):  # only what died with a branch; other uncalled
        delete_module(gm, name)  # submodules (and their parameters) stay, as in every cut
    gm.recompile()
    return gm


def empty_groups(graph: ChannelGraph, removed: np.ndarray) -> list[int]:
    """Indices of the groups whose every unit is in ``removed``."""
    return [g.index for g in graph.groups if g.units and bool(removed[np.asarray(g.units)].all())]

"""Function rules for concat / split / indexing, shape ops, reductions, padding and non-tensor ops.

Rules are ``rule(prop, node, name, x) -> value`` keyed by the normalised op name (see ``registry``); registered in
``RULES`` at the bottom (after ``elementwise``: non-tensor ops wrap the rule registered before them)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from lcp.engine.rules import elementwise as _elementwise  # noqa: F401  (the non-tensor rules wrap its rules)
from lcp.engine.rules.propagator import Propagator, flatten_args, meta_shapes, norm_dim
from lcp.engine.rules.registry import RULES
from lcp.engine.types import Chan

_REDUCE = {"mean", "sum", "amax", "amin", "std", "var", "logsumexp", "norm"}
_NON_TENSOR = {
    "size",
    "dim",
    "numel",
    "getattr",
    "_assert",
    "is_floating_point",
    "is_contiguous",
    "_assert_scalar",
    "sym_size",
    "eq",
    "ne",
    "lt",
    "gt",
    "le",
    "ge",
    "floordiv",
}


def cat(prop: Propagator, node: fx.Node, name: str, x: Any) -> Any:
    """Concat: on the channel dim the id lists are concatenated; on another dim the operands' ids unite."""
    shape = prop.shape(node)
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    vals = [prop.val(t) for t in tensors]
    if not all(isinstance(v, Chan) for v in vals) or not isinstance(shape, tuple):
        return prop.unknown(node, "concat of untracked tensors")
    d = norm_dim(dim, len(shape))
    if len({v.dim for v in vals}) != 1:
        return prop.unknown(node, "concat of tensors with channels on different dimensions")
    if d == vals[0].dim:
        return Chan(d, np.concatenate([v.ids for v in vals]))
    for v in vals[1:]:
        prop.uf.union_arrays(vals[0].ids, v.ids)
    return vals[0]


def split(prop: Propagator, node: fx.Node, name: str, x: Any) -> Any:
    """split / chunk / unbind: pieces of the id list (constant split sizes are recorded to be rewritten)."""
    shapes = prop.shape(node)
    if not isinstance(x, Chan) or not isinstance(shapes, list):
        return prop.unknown(node, f"{name} of an untracked tensor")
    args, kw = node.args, node.kwargs
    if name == "unbind":
        dim = kw.get("dim", args[1] if len(args) > 1 else 0)
    else:
        dim = kw.get("dim", args[2] if len(args) > 2 else 0)
    in_rank = len(meta_shapes(args[0]))
    d = norm_dim(dim, in_rank)
    if d != x.dim:
        shift = 1 if (name == "unbind" and d < x.dim) else 0  # unbind drops the dimension it splits
        return tuple(Chan(x.dim - shift, x.ids) for _ in shapes)
    if name == "unbind":
        return prop.unknown(node, "unbind over channels")
    sizes = [s[x.dim] for s in shapes]
    pieces, start = [], 0
    for s in sizes:
        pieces.append(x.ids[start : start + s])
        start += s
    if name == "chunk" and len(set(sizes)) == 1:
        # chunk(n) re-derives sizes from the width: remove the same positions from every piece
        for p in pieces[1:]:
            prop.uf.union_arrays(pieces[0], p)
        return tuple(Chan(x.dim, p) for p in pieces)
    if name in ("split", "split_with_sizes"):
        # constant sizes: rewritten in the pruned graph; every piece must keep a channel
        for i, p in enumerate(pieces):
            prop.record(f"{node.name}#{i}", "split", out_ids=p, extra={"node": node.name, "piece": i})
        return tuple(Chan(x.dim, p) for p in pieces)
    return prop.unknown(node, f"{name} over channels with unequal pieces")


def getitem(prop: Propagator, node: fx.Node, name: str, x: Any) -> Any:
    """Indexing: an item of a tuple value, or basic indexing of a tensor (constant channel slices recorded)."""
    idx = node.args[1]
    if isinstance(x, tuple):
        return x[idx] if isinstance(idx, int) else prop.unknown(node, "tuple slicing")
    if not isinstance(x, Chan):
        return None if x is None else prop.unknown(node, "unexpected indexing")
    in_rank = len(meta_shapes(node.args[0]))
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, (fx.Node, list, torch.Tensor)) for i in idx):
        return prop.unknown(node, "tensor indexing")
    # walk the index: (position in idx, index item) per input dim, tracking the output dim
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    items: list[tuple[int, Any]] = []
    for pos, i in enumerate(idx):
        if i is Ellipsis:
            items.extend([(-1, slice(None))] * (in_rank - n_real))
        else:
            items.append((pos, i))
    items.extend([(-1, slice(None))] * (in_rank - sum(1 for _, i in items if i is not None)))
    in_dim, out_dim = 0, 0
    for pos, i in items:
        if i is None:
            out_dim += 1
            continue
        if in_dim == x.dim:
            return _channel_index(prop, node, x, pos, i, out_dim)
        if not isinstance(i, int):
            out_dim += 1
        in_dim += 1
    return prop.unknown(node, "unexpected indexing")


def _channel_index(prop: Propagator, node: fx.Node, x: Chan, pos: int, i: Any, out_dim: int) -> Any:
    if isinstance(i, slice) and i == slice(None):
        return Chan(out_dim, x.ids)
    if (
        isinstance(i, slice)
        and i.step in (None, 1)
        and pos >= 0
        and all(isinstance(b, (int, type(None))) for b in (i.start, i.stop))
    ):
        start, stop, _ = i.indices(len(x.ids))
        if stop > start:
            # constant bounds: rewritten in the pruned graph to the kept counts before start and stop
            prop.record(
                node.name,
                "slice",
                out_ids=x.ids[start:stop],
                in_ids=x.ids,
                extra={"node": node.name, "start": start, "stop": stop, "pos": pos},
            )
            return Chan(out_dim, x.ids[start:stop])
    return prop.unknown(node, "indexing into channels")


def reshape(prop: Propagator, node: fx.Node, name: str, x: Any) -> Any:
    """view / reshape: merging dims is a flatten; splitting dims before or after the channel dim keeps it."""
    shape = prop.shape(node)
    in_shape = meta_shapes(node.args[0])
    if not isinstance(x, Chan) or not isinstance(shape, tuple):
        return prop.unknown(node, "reshape of an untracked tensor")
    # constant sizes that include the channel count would be wrong after pruning
    const = [a for a in flatten_args(node.args[1:]) if isinstance(a, int) and a not in (-1, 1)]
    if shape == in_shape:
        if shape[x.dim] in const:
            return prop.unknown(node, "reshape to a constant size that includes the channels")
        return x
    for s0 in range(len(in_shape)):
        for e0 in range(s0 + 1, len(in_shape)):
            merged = in_shape[:s0] + (int(math.prod(in_shape[s0 : e0 + 1])),) + in_shape[e0 + 1 :]
            if merged == shape and s0 <= x.dim <= e0:
                if shape[s0] in const:
                    return prop.unknown(node, "reshape to a constant size that includes the channels")
                return prop.flatten(node, x, s0, e0)
            if merged == shape:
                if len(x.ids) in const:
                    return prop.unknown(node, "reshape to a constant size that includes the channels")
                return Chan(x.dim if x.dim < s0 else x.dim - (e0 - s0), x.ids)
    # splitting dims after the channel dim (N, C, HW) -> (N, C, H, W)
    if shape[: x.dim + 1] == in_shape[: x.dim + 1] and len(x.ids) not in const:
        return x
    # splitting dims before it (N T, C) -> (N, T, C): frames folded into the batch, unfolded again
    moved = len(shape) - len(in_shape) + x.dim
    if (
        moved > x.dim
        and shape[moved:] == in_shape[x.dim :]
        and math.prod(shape[:moved]) == math.prod(in_shape[: x.dim])
        and len(x.ids) not in const
    ):
        return Chan(moved, x.ids)
    return prop.unknown(node, "reshape that moves or splits the channels")


def permute(prop: Propagator, node: fx.Node, name: str, x: Any) -> Any:
    """permute / transpose / movedim / swapaxes / t: the channel dim moves."""
    shape = prop.shape(node)
    if not isinstance(x, Chan) or not isinstance(shape, tuple):
        return prop.unknown(node, "permute of an untracked tensor")
    r = len(shape)
    args = [a for a in node.args[1:]]
    if name == "permute":
        dims = list(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else list(args)
        dims = node.kwargs.get("dims", dims)
        order = [norm_dim(d, r) for d in dims]
        return Chan(order.index(x.dim), x.ids)
    if name == "t":
        a, b = 0, 1
    else:
        a = norm_dim(node.kwargs.get("dim0", args[0] if args else 0), r)
        b = norm_dim(node.kwargs.get("dim1", args[1] if len(args) > 1 else 1), r)
    if name == "movedim":
        order = list(range(r))
        order.insert(b, order.pop(a))
        return Chan(order.index(x.dim), x.ids)
    d = b if x.dim == a else a if x.dim == b else x.dim
    return Chan(d, x.ids)


def squeeze(prop: Propagator, node: fx.Node, name: str, x: Any) -> Any:
    """squeeze / unsqueeze: the channel dim shifts (a single channel is frozen)."""
    shape = prop.shape(node)
    in_shape = meta_shapes(node.args[0])
    if not isinstance(x, Chan) or not isinstance(shape, tuple):
        return prop.unknown(node, "squeeze of an untracked tensor")
    if len(x.ids) == 1:
        return prop.unknown(node, "squeeze of a single channel")
    if name == "unsqueeze":
        d = norm_dim(node.kwargs.get("dim", node.args[1]), len(shape))
        return Chan(x.dim + 1 if d <= x.dim else x.dim, x.ids)
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if dims is None:
        dims = list(range(len(in_shape)))
    dims = [norm_dim(d, len(in_shape)) for d in ([dims] if isinstance(dims, int) else dims)]
    removed = sum(1 for d in dims if d < x.dim and in_shape[d] == 1)
    return Chan(x.dim - removed, x.ids)


def reduce(prop: Propagator, node: fx.Node, name: str, x: Any) -> Any:
    """mean / sum / amax ... over other dims: ids pass (over the channel dim: frozen)."""
    if not isinstance(x, Chan):
        return prop.unknown(node, "reduction of an untracked tensor")
    in_rank = len(meta_shapes(node.args[0]))
    at = 2 if name == "norm" else 1  # norm(x, p, dim, keepdim): its second argument is the order, not a dim
    dims = node.kwargs.get("dim", node.args[at] if len(node.args) > at else None)
    if dims is None:
        return prop.unknown(node, "reduction over all dimensions")
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = [norm_dim(d, in_rank) for d in dims]
    if x.dim in dims:
        return prop.unknown(node, "reduction over channels")
    keep = node.kwargs.get("keepdim", node.args[at + 1] if len(node.args) > at + 1 else False)
    return Chan(x.dim if keep else x.dim - sum(d < x.dim for d in dims), x.ids)


def pad(prop: Propagator, node: fx.Node, name: str, x: Any) -> Any:
    """F.pad: padding the channel dim inserts frozen constant ids."""
    if not isinstance(x, Chan):
        return prop.unknown(node, "pad of an untracked tensor")
    pads = node.kwargs.get("pad", node.args[1] if len(node.args) > 1 else None)
    in_shape = meta_shapes(node.args[0])
    r = len(in_shape)
    k = r - 1 - x.dim  # F.pad pads from the last dim backwards, two numbers per dim
    if pads is None or any(isinstance(p, fx.Node) for p in pads):
        return prop.unknown(node, "pad with computed amounts")
    if len(pads) <= 2 * k or (pads[2 * k] == 0 and pads[2 * k + 1] == 0):
        return x
    left, right = pads[2 * k], pads[2 * k + 1]
    if left < 0 or right < 0:
        return prop.unknown(node, "negative padding of channels")
    const = f"constant channels padded by {node.name} (F.pad in forward code)"
    return Chan(x.dim, np.concatenate([prop.uf.new(left, const), x.ids, prop.uf.new(right, const)]))


def softmax(prop: Propagator, node: fx.Node, name: str, x: Any) -> Any:
    """softmax over another dim: ids pass (over the channel dim: frozen)."""
    shape, args = prop.shape(node), node.args
    dim = node.kwargs.get("dim", args[1] if len(args) > 1 else None)
    if isinstance(x, Chan) and dim is not None and norm_dim(dim, len(shape)) != x.dim:
        return x
    return prop.unknown(node, "softmax over channels")


def flatten(prop: Propagator, node: fx.Node, name: str, x: Any) -> Any:
    """torch.flatten / x.flatten: each channel id becomes a block of ids of the merged dim."""
    args = node.args
    start = node.kwargs.get("start_dim", args[1] if len(args) > 1 else 0)
    end = node.kwargs.get("end_dim", args[2] if len(args) > 2 else -1)
    return prop.flatten(node, x, start, end)


def expand(prop: Propagator, node: fx.Node, name: str, x: Any) -> Any:
    """expand / expand_as / repeat that keep the channel count: ids pass."""
    shape, in_shape = prop.shape(node), meta_shapes(node.args[0])
    if (
        isinstance(x, Chan)
        and isinstance(shape, tuple)
        and len(shape) == len(in_shape)
        and shape[x.dim] == in_shape[x.dim]
    ):
        return x
    return prop.unknown(node, f"{name} changes the channel dimension")


def flip(prop: Propagator, node: fx.Node, name: str, x: Any) -> Any:
    """flip / roll over other dims: ids pass."""
    shape, args = prop.shape(node), node.args
    dims = node.kwargs.get("dims", args[-1] if len(args) > 1 else None)
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    if isinstance(x, Chan) and all(norm_dim(d, len(shape)) != x.dim for d in dims):
        return x
    return prop.unknown(node, f"{name} over channels")


def _non_tensor(otherwise: Any) -> Any:
    """Ops that give shapes, flags or scalars (``x.size()``, comparisons): untracked, unless the result is a
    tensor of rank >= 2, which goes to ``otherwise`` (or freezes)."""

    def rule(prop: Propagator, node: fx.Node, name: str, x: Any) -> Any:
        shape = prop.shape(node)
        if not (isinstance(shape, tuple) and len(shape) >= 2):
            return None
        if otherwise is None:
            return prop.unknown(node, f"op {name} is not modelled")
        return otherwise(prop, node, name, x)

    return rule


# ---------------------------------------------------------------------------------------------------------------
# Registration

RULES.function(("softmax", "log_softmax"), softmax)
RULES.function(("cat", "concat", "concatenate"), cat)
RULES.function(("split", "chunk", "tensor_split", "unbind", "split_with_sizes"), split)
RULES.function("getitem", getitem)
RULES.function("flatten", flatten)
RULES.function(("view", "reshape"), reshape)
RULES.function(("permute", "transpose", "movedim", "swapaxes", "t"), permute)
RULES.function(("squeeze", "unsqueeze"), squeeze)
RULES.function(tuple(_REDUCE), reduce)
RULES.function("pad", pad)
RULES.function(("expand", "expand_as", "repeat"), expand)
RULES.function(("flip", "roll"), flip)
for _name in sorted(_NON_TENSOR):
    RULES.function(_name, _non_tensor(RULES.function_rule(_name)))

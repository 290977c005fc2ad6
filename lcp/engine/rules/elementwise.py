"""Elementwise function rules (activations, arithmetic between tensors): ids pass, or unite position by
position between the operands. Rules are ``rule(prop, node, name, x) -> value`` keyed by the normalised op name,
so ``torch.relu``, ``F.relu`` and ``x.relu()`` share one rule."""

from __future__ import annotations

from typing import Any

import torch.fx as fx

from lcp.engine.rules.propagator import Propagator, flatten_args, meta_shapes
from lcp.engine.rules.registry import RULES
from lcp.engine.types import Chan

_UNARY = {
    "relu",
    "relu_",
    "relu6",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "gelu",
    "silu",
    "silu_",
    "hardswish",
    "hardswish_",
    "hardsigmoid",
    "hardsigmoid_",
    "hardtanh",
    "hardtanh_",
    "leaky_relu",
    "leaky_relu_",
    "elu",
    "elu_",
    "selu",
    "celu",
    "mish",
    "softplus",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "feature_alpha_dropout",
    "contiguous",
    "clone",
    "detach",
    "float",
    "half",
    "double",
    "bfloat16",
    "to",
    "cpu",
    "cuda",
    "abs",
    "neg",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "clamp",
    "clamp_",
    "clip",
    "clamp_min",
    "clamp_max",
    "sign",
    "square",
    "reciprocal",
    "erf",
    "floor",
    "ceil",
    "round",
    "sin",
    "cos",
    "logsigmoid",
    "softsign",
    "tanhshrink",
    "interpolate",
    "upsample",
    "upsample_nearest",
    "upsample_bilinear",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "lp_pool2d",
    "pad_same",
    "max_pool2d_same",
    "avg_pool2d_same",
    "type_as",
    "requires_grad_",
    "pow",
    "__pow__",
}
_BINARY = {
    "add",
    "add_",
    "sub",
    "sub_",
    "mul",
    "mul_",
    "div",
    "div_",
    "truediv",
    "__add__",
    "__radd__",
    "__mul__",
    "__rmul__",
    "__sub__",
    "__rsub__",
    "__truediv__",
    "maximum",
    "minimum",
    "iadd",
    "imul",
    "isub",
    "itruediv",
    "floordiv",
}
_REDUCE = {"mean", "sum", "amax", "amin", "std", "var", "logsumexp", "norm"}


def unary(prop: Propagator, node: fx.Node, name: str, x: Any) -> Any:
    """Elementwise op of one tensor (activations, casts, per-channel pooling): ids pass."""
    if not isinstance(x, Chan):
        return prop.unknown(node, "unexpected input")
    # second operands of unary-like ops (pow exponent, clamp bounds) must not be channel tensors
    for a in flatten_args((node.args[1:], node.kwargs)):
        if isinstance(a, fx.Node) and isinstance(meta_shapes(a), tuple) and len(meta_shapes(a)) > 0:
            return prop.unknown(node, "tensor-valued second operand")
    return prop.passthrough(node, x)


def binary(prop: Propagator, node: fx.Node, name: str, x: Any) -> Any:
    """Elementwise op between tensors: unite ids position by position along the shared channel dim."""
    shape = prop.shape(node)
    if not isinstance(shape, tuple):
        return prop.unknown(node, "unexpected output")
    nd = len(shape)
    chans: list[tuple[int, Chan]] = []  # (aligned channel dim in output, value)
    untracked: list[tuple[int, ...]] = []
    for a in node.args[:2]:
        if not isinstance(a, fx.Node):
            continue
        v, s = prop.values.get(a), meta_shapes(a)
        if not isinstance(s, tuple):
            continue
        if isinstance(v, Chan):
            chans.append((v.dim + nd - len(s), v))
        elif len(s) > 0:
            untracked.append((nd - len(s),) + s)
    dims = {d for d, v in chans if len(v.ids) == shape[d] and shape[d] > 1} or {d for d, _ in chans}
    if len(dims) != 1:
        return prop.unknown(node, "operands carry channels on different dimensions")
    d = dims.pop()
    full = [v for dd, v in chans if len(v.ids) == shape[d]]
    for _, v in chans:
        if len(v.ids) != shape[d]:
            # a size-1 channel broadcast over all channels (spatial gate): keep it whole
            prop.freeze(node, v, "broadcast of one channel over many")
    for u in untracked:
        offset, s = u[0], u[1:]
        k = d - offset
        if 0 <= k < len(s) and s[k] > 1:
            prop.freeze(node, full, "elementwise op with a parameter or constant tensor over channels")
    if not full:
        return prop.unknown(node, "no operand carries the output channels")
    for v in full[1:]:
        prop.uf.union_arrays(full[0].ids, v.ids)
    return Chan(d, full[0].ids)


# Registration

RULES.function(tuple(_UNARY), unary)
RULES.function(tuple(_BINARY), binary)

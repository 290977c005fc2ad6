"""How channel ids flow through each kind of op: one small function per op type.

``Propagator`` walks the traced graph in order and maps every node to a value: a ``Chan`` (a tensor whose
dimension ``dim`` carries channel ids), a tuple of values (split, multi-output modules), or ``None``
(not a tensor, or a tensor whose channels lcp does not track, such as a parameter read in ``forward``).
Whatever is not modelled here freezes the ids it receives: the result is always a valid network.
"""
from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from lcp.engine.graph import Chan, Frozen, Record, UnionFind

# ---------------------------------------------------------------------------------------------------------------
# Module classification

_ELEMENTWISE_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU,
    nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.Tanhshrink, nn.Softsign,
)
_SPATIAL_MODULES: tuple[type, ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad2d,
)
_BATCHNORMS: tuple[type, ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _optional(path: str, names: list[str]) -> tuple[type, ...]:
    try:
        mod = __import__(path, fromlist=names)
    except Exception:
        return ()
    return tuple(getattr(mod, n) for n in names if hasattr(mod, n))


def _timm_elementwise() -> tuple[type, ...]:
    """timm's parameter-free activation modules (elementwise by construction)."""
    out: list[type] = []
    for path in ("timm.layers.activations", "timm.layers.activations_me"):
        try:
            mod = __import__(path, fromlist=["x"])
        except Exception:
            continue
        for v in vars(mod).values():
            if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == mod.__name__:
                out.append(v)
    # PReLU is elementwise but has per-channel parameters when num_parameters > 1: handled separately
    return tuple(t for t in out if t.__name__ not in ("PReLU",))


_TIMM_ELEMENTWISE = _timm_elementwise()
_TIMM_CONVS = _optional("timm.layers", ["Conv2dSame"])
_TIMM_BN_ACT = _optional("timm.layers", ["BatchNormAct2d", "SyncBatchNormAct", "FrozenBatchNormAct2d"])
_FROZEN_BNS = _optional("timm.layers", ["FrozenBatchNorm2d"]) + _optional("torchvision.ops", ["FrozenBatchNorm2d"])
_TIMM_LINEAR = _optional("timm.layers", ["Linear"])
_TIMM_POOLS = _optional("timm.layers", ["MaxPool2dSame", "AvgPool2dSame"])
#: convs that standardize each filter over its inputs (BiT, NFNet); see ``surgery.fold_weight_standardization``
STD_CONVS = _optional("timm.layers", ["StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame"])
_TIMM_GROUP_NORMS = _optional("timm.layers", ["GroupNorm", "GroupNormAct", "GroupNorm1", "GroupNorm1Act"])
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _shortcut_a() -> tuple[type, ...]:
    return _optional("lcp.models.zoo", ["ShortcutA"])


def leaf_types() -> tuple[type, ...]:
    """Module types the tracer keeps whole because lcp models them (see ``Propagator.module``)."""
    return (_CONVS + (nn.Linear,) + _TIMM_LINEAR + _BATCHNORMS + _FROZEN_BNS + _TIMM_BN_ACT + _shortcut_a() + _TIMM_POOLS
            + STD_CONVS + _TIMM_GROUP_NORMS)


def _is_exact_conv(m: nn.Module) -> bool:
    # subclasses of Conv2d may transform their weight (weight standardisation...): only exact types are
    # known to be linear per input channel. Weight-standardized convs are not (removing an input changes every
    # filter's statistics), but they are modelled: surgery folds the standardization into a plain conv first
    return type(m) in _CONVS or type(m) in _TIMM_CONVS or type(m) in STD_CONVS


def _is_elementwise_module(m: nn.Module) -> bool:
    if type(m) in _ELEMENTWISE_MODULES or type(m) in _TIMM_ELEMENTWISE:
        return True
    if isinstance(m, nn.PReLU):
        return m.num_parameters == 1
    return False


# ---------------------------------------------------------------------------------------------------------------
# Function / method classification (by name, so torch.relu, F.relu and x.relu() share one rule)

_UNARY = {
    "relu", "relu_", "relu6", "sigmoid", "sigmoid_", "tanh", "tanh_", "gelu", "silu", "silu_", "hardswish",
    "hardswish_", "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu",
    "elu_", "selu", "celu", "mish", "softplus", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "contiguous", "clone", "detach", "float", "half", "double", "bfloat16", "to", "cpu",
    "cuda", "abs", "neg", "exp", "log", "sqrt", "rsqrt", "clamp", "clamp_", "clip", "clamp_min", "clamp_max",
    "sign", "square", "reciprocal", "erf", "floor", "ceil", "round", "sin", "cos", "logsigmoid", "softsign",
    "tanhshrink", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "avg_pool1d", "avg_pool2d",
    "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "lp_pool2d", "pad_same", "max_pool2d_same", "avg_pool2d_same",
    "type_as", "requires_grad_", "pow", "__pow__",
}
_BINARY = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "truediv", "__add__", "__radd__", "__mul__",
           "__rmul__", "__sub__", "__rsub__", "__truediv__", "maximum", "minimum", "iadd", "imul", "isub",
           "itruediv", "floordiv"}
_REDUCE = {"mean", "sum", "amax", "amin", "std", "var", "logsumexp", "norm"}
_NON_TENSOR = {"size", "dim", "numel", "getattr", "_assert", "is_floating_point", "is_contiguous",
               "_assert_scalar", "sym_size", "eq", "ne", "lt", "gt", "le", "ge", "floordiv"}


def _op_name(node: fx.Node) -> str:
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


def _meta_shapes(node: fx.Node) -> Any:
    """Shapes from ShapeProp: a tuple for a tensor, a list of those for a tuple of tensors, None otherwise."""
    tm = node.meta.get("tensor_meta")

    def conv(m: Any) -> Any:
        if m is None:
            return None
        if hasattr(m, "shape"):
            return tuple(int(s) for s in m.shape)
        if isinstance(m, (list, tuple)):
            return [conv(x) for x in m]
        if isinstance(m, dict):
            return None
        return None

    return conv(tm)


def _flatten_args(x: Any) -> list[Any]:
    if isinstance(x, (list, tuple)):
        return [y for a in x for y in _flatten_args(a)]
    if isinstance(x, dict):
        return [y for a in x.values() for y in _flatten_args(a)]
    return [x]


class Propagator:
    """Walks a shape-propagated GraphModule once and records channel ids, module records and frozen ops."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.uf = UnionFind()
        self.records: list[Record] = []
        self._record_of: dict[str, Record] = {}
        self.frozen_ops: list[Frozen] = []
        self.values: dict[fx.Node, Any] = {}

    # ------------------------------------------------------------------ helpers
    def freeze(self, node: fx.Node, value: Any, reason: str) -> None:
        hit = False
        for v in _flatten_args(value):
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

    def record(self, name: str, kind: str, **kw: Any) -> Record:
        rec = Record(name=name, kind=kind, **kw)
        self.records.append(rec)
        self._record_of[name] = rec
        return rec

    def val(self, a: Any) -> Any:
        return self.values.get(a) if isinstance(a, fx.Node) else None

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                out = self.fresh_like(node, _meta_shapes(node), frozen="model input")
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
                out = self.function(node, _op_name(node))
            self.values[node] = out

    # ------------------------------------------------------------------ modules
    def module(self, node: fx.Node, m: nn.Module) -> Any:
        x = self.val(node.args[0]) if node.args else None
        shape = _meta_shapes(node)
        if _is_exact_conv(m):
            return self.conv(node, m, x, shape)
        if type(m) is nn.Linear or type(m) in _TIMM_LINEAR:
            return self.linear(node, m, x, shape)
        if isinstance(m, _BATCHNORMS + _FROZEN_BNS + _TIMM_BN_ACT):
            return self.norm(node, m, x)
        if isinstance(m, nn.GroupNorm) and m.num_groups > 1:
            return self.group_norm(node, m, x)
        if isinstance(m, nn.InstanceNorm2d | nn.InstanceNorm1d):
            return self.norm(node, m, x) if m.affine or m.track_running_stats else self.passthrough(node, x)
        if _is_elementwise_module(m) or isinstance(m, _SPATIAL_MODULES + _TIMM_POOLS):
            return self.passthrough(node, x)
        if isinstance(m, nn.Flatten):
            return self.flatten(node, x, m.start_dim, m.end_dim)
        if isinstance(m, _shortcut_a()):
            return self.shortcut_a(node, m, x, shape)
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            return self.unknown(node, f"{type(m).__name__} normalizes across channels")
        return self.unknown(node, f"module {type(m).__name__} is not modelled")

    def passthrough(self, node: fx.Node, x: Any) -> Any:
        if isinstance(x, Chan):
            shape = _meta_shapes(node)
            in_shape = _meta_shapes(node.args[0]) if isinstance(node.args[0], fx.Node) else None
            if isinstance(shape, tuple) and in_shape is not None and len(shape) == len(in_shape) \
                    and shape[x.dim] == len(x.ids):
                return x
            return self.unknown(node, "changes the channel dimension")
        if x is None:
            return None
        return self.unknown(node, "unexpected input")

    def conv(self, node: fx.Node, m: nn.Module, x: Any, shape: Any) -> Any:
        if x is None:  # input from an untracked op: its channels stay, the filters are still prunable
            x = Chan(1, self.uf.new(m.in_channels, frozen=f"input of {node.target} comes from an untracked op"))
        if not (isinstance(x, Chan) and x.dim == 1 and len(x.ids) == m.in_channels):
            return self.unknown(node, "conv input channels are not on dim 1")
        name = str(node.target)
        spatial = int(math.prod(shape[2:])) if isinstance(shape, tuple) else 1
        rec = self._record_of.get(name)
        if rec is not None:  # module called again: same filters, inputs coupled position by position
            self.uf.union_arrays(rec.in_ids, x.ids)
            rec.spatial += spatial
            return Chan(1, rec.out_ids)
        g, cin, cout = m.groups, m.in_channels, m.out_channels
        in_pg, out_pg = cin // g, cout // g
        out = self.uf.new(cout)
        if g == 1:
            mode = "dense"
        elif in_pg == 1:
            # depthwise (with channel multiplier out_pg): output k*out_pg+t belongs to input k's unit
            mode = "depthwise"
            self.uf.union_arrays(out, np.repeat(x.ids, out_pg))
        else:
            # grouped: remove the same positions from every group so groups stay equal
            mode = "grouped"
            self.uf.union_arrays(x.ids, np.tile(x.ids[:in_pg], g))
            self.uf.union_arrays(out, np.tile(out[:out_pg], g))
        self.record(name, "conv", out_ids=out, in_ids=x.ids, mode=mode, groups=g,
                    kernel=int(math.prod(m.kernel_size)), spatial=spatial, bias=m.bias is not None)
        return Chan(1, out)

    def linear(self, node: fx.Node, m: nn.Linear, x: Any, shape: Any) -> Any:
        if x is None and isinstance(shape, tuple):
            x = Chan(len(shape) - 1, self.uf.new(m.in_features, frozen=f"input of {node.target} is untracked"))
        if not (isinstance(x, Chan) and isinstance(shape, tuple) and x.dim == len(shape) - 1
                and len(x.ids) == m.in_features):
            return self.unknown(node, "linear input features are not the tracked last dimension")
        name = str(node.target)
        tokens = int(math.prod(shape[1:-1])) if len(shape) > 2 else 1
        rec = self._record_of.get(name)
        if rec is not None:
            self.uf.union_arrays(rec.in_ids, x.ids)
            rec.spatial += tokens
            return Chan(x.dim, rec.out_ids)
        out = self.uf.new(m.out_features)
        self.record(name, "linear", out_ids=out, in_ids=x.ids, spatial=tokens, bias=m.bias is not None)
        return Chan(x.dim, out)

    def norm(self, node: fx.Node, m: nn.Module, x: Any) -> Any:
        if x is None:
            return None
        if not (isinstance(x, Chan) and x.dim == 1):
            return self.unknown(node, "norm input channels are not on dim 1")
        act = getattr(m, "act", None)
        drop = getattr(m, "drop", None)
        for sub in (act, drop):
            if sub is not None and not _is_elementwise_module(sub):
                return self.unknown(node, f"{type(m).__name__} holds a non-elementwise {type(sub).__name__}")
        name = str(node.target)
        rec = self._record_of.get(name)
        if rec is not None:
            self.uf.union_arrays(rec.out_ids, x.ids)
        else:
            self.record(name, "norm", out_ids=x.ids)
        return x

    def group_norm(self, node: fx.Node, m: nn.GroupNorm, x: Any) -> Any:
        # statistics are per group: removing whole groups leaves the others exact, so a group is one unit
        if isinstance(x, Chan) and x.dim == 1 and len(x.ids) == m.num_channels:
            groups = x.ids.reshape(m.num_groups, -1)
            for j in range(1, groups.shape[1]):
                self.uf.union_arrays(groups[:, 0], groups[:, j])
        return self.norm(node, m, x)

    def shortcut_a(self, node: fx.Node, m: nn.Module, x: Any, shape: Any) -> Any:
        if not (isinstance(x, Chan) and x.dim == 1):
            return self.unknown(node, "shortcut input channels are not on dim 1")
        left, right = self.uf.new(m.pad_left), self.uf.new(m.pad_right)
        self.record(str(node.target), "pad", out_ids=np.concatenate([left, right]),
                    extra={"n_left": int(m.pad_left)})
        return Chan(1, np.concatenate([left, x.ids, right]))

    # ------------------------------------------------------------------ functions and methods
    def function(self, node: fx.Node, name: str) -> Any:
        args = node.args
        shape = _meta_shapes(node)
        if name in _NON_TENSOR and not (isinstance(shape, tuple) and len(shape) >= 2):
            return None
        if name == "getitem":
            return self.getitem(node, self.values.get(args[0]) if isinstance(args[0], fx.Node) else None, args[1])
        tensors = [a for a in _flatten_args((args, node.kwargs)) if isinstance(a, fx.Node)]
        if not any(isinstance(self.values.get(a), (Chan, tuple)) for a in tensors):
            return None  # built from parameters, constants or shapes only: untracked
        x = self.val(args[0]) if args else None
        if name in _UNARY:
            return self.unary(node, x, shape)
        if name in _BINARY:
            return self.binary(node, shape)
        if name in ("softmax", "log_softmax"):
            dim = node.kwargs.get("dim", args[1] if len(args) > 1 else None)
            if isinstance(x, Chan) and dim is not None and _norm_dim(dim, len(shape)) != x.dim:
                return x
            return self.unknown(node, "softmax over channels")
        if name == "cat" or name == "concat" or name == "concatenate":
            return self.cat(node, shape)
        if name in ("split", "chunk", "tensor_split", "unbind", "split_with_sizes"):
            return self.split(node, name, x, shape)
        if name in ("flatten",):
            start = node.kwargs.get("start_dim", args[1] if len(args) > 1 else 0)
            end = node.kwargs.get("end_dim", args[2] if len(args) > 2 else -1)
            return self.flatten(node, x, start, end)
        if name in ("view", "reshape"):
            return self.reshape(node, x, shape)
        if name in ("permute", "transpose", "movedim", "swapaxes", "t"):
            return self.permute(node, x, shape)
        if name in ("squeeze", "unsqueeze"):
            return self.squeeze(node, x, shape)
        if name in _REDUCE:
            return self.reduce(node, x, shape)
        if name in ("pad",):
            return self.pad(node, x, shape)
        if name in ("expand", "expand_as", "repeat"):
            in_shape = _meta_shapes(args[0])
            if isinstance(x, Chan) and isinstance(shape, tuple) and len(shape) == len(in_shape) \
                    and shape[x.dim] == in_shape[x.dim]:
                return x
            return self.unknown(node, f"{name} changes the channel dimension")
        if name in ("flip", "roll"):
            dims = node.kwargs.get("dims", args[-1] if len(args) > 1 else None)
            dims = [dims] if isinstance(dims, int) else list(dims or [])
            if isinstance(x, Chan) and all(_norm_dim(d, len(shape)) != x.dim for d in dims):
                return x
            return self.unknown(node, f"{name} over channels")
        return self.unknown(node, f"op {name} is not modelled")

    def unary(self, node: fx.Node, x: Any, shape: Any) -> Any:
        if not isinstance(x, Chan):
            return self.unknown(node, "unexpected input")
        # second operands of unary-like ops (pow exponent, clamp bounds) must not be channel tensors
        for a in _flatten_args((node.args[1:], node.kwargs)):
            if isinstance(a, fx.Node) and isinstance(_meta_shapes(a), tuple) and len(_meta_shapes(a)) > 0:
                return self.unknown(node, "tensor-valued second operand")
        return self.passthrough(node, x)

    def binary(self, node: fx.Node, shape: Any) -> Any:
        """Elementwise op between tensors: unite ids position by position along the shared channel dim."""
        if not isinstance(shape, tuple):
            return self.unknown(node, "unexpected output")
        nd = len(shape)
        chans: list[tuple[int, Chan]] = []  # (aligned channel dim in output, value)
        untracked: list[tuple[int, ...]] = []
        for a in node.args[:2]:
            if not isinstance(a, fx.Node):
                continue
            v, s = self.values.get(a), _meta_shapes(a)
            if not isinstance(s, tuple):
                continue
            if isinstance(v, Chan):
                chans.append((v.dim + nd - len(s), v))
            elif len(s) > 0:
                untracked.append((nd - len(s),) + s)
        dims = {d for d, v in chans if len(v.ids) == shape[d] and shape[d] > 1} or {d for d, _ in chans}
        if len(dims) != 1:
            return self.unknown(node, "operands carry channels on different dimensions")
        d = dims.pop()
        full = [v for dd, v in chans if len(v.ids) == shape[d]]
        for dd, v in chans:
            if len(v.ids) != shape[d]:
                # a size-1 channel broadcast over all channels (spatial gate): keep it whole
                self.freeze(node, v, "broadcast of one channel over many")
        for u in untracked:
            offset, s = u[0], u[1:]
            k = d - offset
            if 0 <= k < len(s) and s[k] > 1:
                self.freeze(node, full, "elementwise op with a parameter or constant tensor over channels")
        if not full:
            return self.unknown(node, "no operand carries the output channels")
        for v in full[1:]:
            self.uf.union_arrays(full[0].ids, v.ids)
        return Chan(d, full[0].ids)

    def cat(self, node: fx.Node, shape: Any) -> Any:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        vals = [self.val(t) for t in tensors]
        if not all(isinstance(v, Chan) for v in vals) or not isinstance(shape, tuple):
            return self.unknown(node, "concat of untracked tensors")
        d = _norm_dim(dim, len(shape))
        if len({v.dim for v in vals}) != 1:
            return self.unknown(node, "concat of tensors with channels on different dimensions")
        if d == vals[0].dim:
            return Chan(d, np.concatenate([v.ids for v in vals]))
        for v in vals[1:]:
            self.uf.union_arrays(vals[0].ids, v.ids)
        return vals[0]

    def split(self, node: fx.Node, name: str, x: Any, shapes: Any) -> Any:
        if not isinstance(x, Chan) or not isinstance(shapes, list):
            return self.unknown(node, f"{name} of an untracked tensor")
        args, kw = node.args, node.kwargs
        if name == "unbind":
            dim = kw.get("dim", args[1] if len(args) > 1 else 0)
        else:
            dim = kw.get("dim", args[2] if len(args) > 2 else 0)
        in_rank = len(_meta_shapes(args[0]))
        d = _norm_dim(dim, in_rank)
        if d != x.dim:
            shift = 1 if (name == "unbind" and d < x.dim) else 0  # unbind drops the dimension it splits
            return tuple(Chan(x.dim - shift, x.ids) for _ in shapes)
        if name == "unbind":
            return self.unknown(node, "unbind over channels")
        sizes = [s[x.dim] for s in shapes]
        pieces, start = [], 0
        for s in sizes:
            pieces.append(x.ids[start:start + s])
            start += s
        if name == "chunk" and len(set(sizes)) == 1:
            # chunk(n) re-derives sizes from the width: remove the same positions from every piece
            for p in pieces[1:]:
                self.uf.union_arrays(pieces[0], p)
            return tuple(Chan(x.dim, p) for p in pieces)
        if name in ("split", "split_with_sizes"):
            # constant sizes: rewritten in the pruned graph; every piece must keep a channel
            for i, p in enumerate(pieces):
                self.record(f"{node.name}#{i}", "split", out_ids=p, extra={"node": node.name, "piece": i})
            return tuple(Chan(x.dim, p) for p in pieces)
        return self.unknown(node, f"{name} over channels with unequal pieces")

    def getitem(self, node: fx.Node, x: Any, idx: Any) -> Any:
        if isinstance(x, tuple):
            return x[idx] if isinstance(idx, int) else self.unknown(node, "tuple slicing")
        if not isinstance(x, Chan):
            return None if x is None else self.unknown(node, "unexpected indexing")
        in_rank = len(_meta_shapes(node.args[0]))
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(isinstance(i, (fx.Node, list, torch.Tensor)) for i in idx):
            return self.unknown(node, "tensor indexing")
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
                return self._channel_index(node, x, pos, i, out_dim)
            if not isinstance(i, int):
                out_dim += 1
            in_dim += 1
        return self.unknown(node, "unexpected indexing")

    def _channel_index(self, node: fx.Node, x: Chan, pos: int, i: Any, out_dim: int) -> Any:
        if isinstance(i, slice) and i == slice(None):
            return Chan(out_dim, x.ids)
        if isinstance(i, slice) and i.step in (None, 1) and pos >= 0 \
                and all(isinstance(b, (int, type(None))) for b in (i.start, i.stop)):
            start, stop, _ = i.indices(len(x.ids))
            if stop > start:
                # constant bounds: rewritten in the pruned graph to the kept counts before start and stop
                self.record(node.name, "slice", out_ids=x.ids[start:stop], in_ids=x.ids,
                            extra={"node": node.name, "start": start, "stop": stop, "pos": pos})
                return Chan(out_dim, x.ids[start:stop])
        return self.unknown(node, "indexing into channels")

    def flatten(self, node: fx.Node, x: Any, start: int, end: int) -> Any:
        in_shape = _meta_shapes(node.args[0])
        if not isinstance(x, Chan) or not isinstance(in_shape, tuple):
            return self.unknown(node, "flatten of an untracked tensor")
        r = len(in_shape)
        s, e = _norm_dim(start, r), _norm_dim(end, r)
        if x.dim < s:
            return x
        if x.dim > e:
            return Chan(x.dim - (e - s), x.ids)
        inner = int(math.prod(in_shape[x.dim + 1:e + 1]))
        outer = int(math.prod(in_shape[s:x.dim]))
        return Chan(s, np.tile(np.repeat(x.ids, inner), outer))

    def reshape(self, node: fx.Node, x: Any, shape: Any) -> Any:
        in_shape = _meta_shapes(node.args[0])
        if not isinstance(x, Chan) or not isinstance(shape, tuple):
            return self.unknown(node, "reshape of an untracked tensor")
        if shape == in_shape:
            return x
        # constant sizes that include the channel count would be wrong after pruning
        const = [a for a in _flatten_args(node.args[1:]) if isinstance(a, int) and a not in (-1, 1)]
        for s0 in range(len(in_shape)):
            for e0 in range(s0 + 1, len(in_shape)):
                merged = in_shape[:s0] + (int(math.prod(in_shape[s0:e0 + 1])),) + in_shape[e0 + 1:]
                if merged == shape and s0 <= x.dim <= e0:
                    if shape[s0] in const:
                        return self.unknown(node, "reshape to a constant size that includes the channels")
                    return self.flatten(node, x, s0, e0)
                if merged == shape:
                    return Chan(x.dim if x.dim < s0 else x.dim - (e0 - s0), x.ids)
        # splitting dims after the channel dim (N, C, HW) -> (N, C, H, W)
        if shape[:x.dim + 1] == in_shape[:x.dim + 1] and len(x.ids) not in const:
            return x
        return self.unknown(node, "reshape that moves or splits the channels")

    def permute(self, node: fx.Node, x: Any, shape: Any) -> Any:
        if not isinstance(x, Chan) or not isinstance(shape, tuple):
            return self.unknown(node, "permute of an untracked tensor")
        name = _op_name(node)
        r = len(shape)
        args = [a for a in node.args[1:]]
        if name == "permute":
            dims = list(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else list(args)
            dims = node.kwargs.get("dims", dims)
            order = [_norm_dim(d, r) for d in dims]
            return Chan(order.index(x.dim), x.ids)
        if name == "t":
            a, b = 0, 1
        else:
            a = _norm_dim(node.kwargs.get("dim0", args[0] if args else 0), r)
            b = _norm_dim(node.kwargs.get("dim1", args[1] if len(args) > 1 else 1), r)
        if name == "movedim":
            order = list(range(r))
            order.insert(b, order.pop(a))
            return Chan(order.index(x.dim), x.ids)
        d = b if x.dim == a else a if x.dim == b else x.dim
        return Chan(d, x.ids)

    def squeeze(self, node: fx.Node, x: Any, shape: Any) -> Any:
        in_shape = _meta_shapes(node.args[0])
        if not isinstance(x, Chan) or not isinstance(shape, tuple):
            return self.unknown(node, "squeeze of an untracked tensor")
        if len(x.ids) == 1:
            return self.unknown(node, "squeeze of a single channel")
        if _op_name(node) == "unsqueeze":
            d = _norm_dim(node.kwargs.get("dim", node.args[1]), len(shape))
            return Chan(x.dim + 1 if d <= x.dim else x.dim, x.ids)
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        if dims is None:
            dims = list(range(len(in_shape)))
        dims = [_norm_dim(d, len(in_shape)) for d in ([dims] if isinstance(dims, int) else dims)]
        removed = sum(1 for d in dims if d < x.dim and in_shape[d] == 1)
        return Chan(x.dim - removed, x.ids)

    def reduce(self, node: fx.Node, x: Any, shape: Any) -> Any:
        if not isinstance(x, Chan):
            return self.unknown(node, "reduction of an untracked tensor")
        in_rank = len(_meta_shapes(node.args[0]))
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        if dims is None:
            return self.unknown(node, "reduction over all dimensions")
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [_norm_dim(d, in_rank) for d in dims]
        if x.dim in dims:
            return self.unknown(node, "reduction over channels")
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        return Chan(x.dim if keep else x.dim - sum(d < x.dim for d in dims), x.ids)

    def pad(self, node: fx.Node, x: Any, shape: Any) -> Any:
        if not isinstance(x, Chan):
            return self.unknown(node, "pad of an untracked tensor")
        pads = node.kwargs.get("pad", node.args[1] if len(node.args) > 1 else None)
        in_shape = _meta_shapes(node.args[0])
        r = len(in_shape)
        k = r - 1 - x.dim  # F.pad pads from the last dim backwards, two numbers per dim
        if pads is None or any(isinstance(p, fx.Node) for p in pads):
            return self.unknown(node, "pad with computed amounts")
        if len(pads) <= 2 * k or (pads[2 * k] == 0 and pads[2 * k + 1] == 0):
            return x
        left, right = pads[2 * k], pads[2 * k + 1]
        if left < 0 or right < 0:
            return self.unknown(node, "negative padding of channels")
        const = f"constant channels padded by {node.name} (F.pad in forward code)"
        return Chan(x.dim, np.concatenate([self.uf.new(left, const), x.ids, self.uf.new(right, const)]))


def _norm_dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} ({node.target})"
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)


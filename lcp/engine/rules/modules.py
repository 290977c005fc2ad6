"""Module rules: convs, linears, norms, activations, pools and flatten (torch.nn and timm's layers).

Each rule is ``rule(prop, node, module, x) -> value`` (see ``registry``); they are registered in ``RULES`` at
the bottom of this file.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any

import numpy as np
import torch.fx as fx
from torch import nn

from lcp.engine.rules.propagator import Propagator
from lcp.engine.rules.registry import RULES
from lcp.engine.types import Chan, LayerKind

# ---------------------------------------------------------------------------------------------------------------
# Module classification

_ELEMENTWISE_MODULES: tuple[type, ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Mish,
    nn.Softplus,
    nn.Hardtanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Tanhshrink,
    nn.Softsign,
)
_SPATIAL_MODULES: tuple[type, ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
    nn.ZeroPad2d,
)
_BATCHNORMS: tuple[type, ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _types(mod: Any, names: list[str]) -> tuple[type, ...]:
    return tuple(getattr(mod, n) for n in names if hasattr(mod, n))


def _timm_elementwise() -> tuple[type, ...]:
    """timm's parameter-free activation modules (elementwise by construction)."""
    out: list[type] = []
    for path in ("timm.layers.activations", "timm.layers.activations_me"):
        mod = sys.modules.get(path)
        if mod is None:
            continue
        for v in vars(mod).values():
            if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == mod.__name__:
                out.append(v)
    # PReLU is elementwise but has per-channel parameters when num_parameters > 1: handled separately
    return tuple(t for t in out if t.__name__ not in ("PReLU",))


@functools.cache
def _timm() -> dict[str, tuple[type, ...]]:
    """timm's layer types by role; only called once ``timm.layers`` is imported (see ``RuleTable.when_imported``)."""
    layers = sys.modules["timm.layers"]
    return {
        "elementwise": _timm_elementwise(),
        "convs": _types(layers, ["Conv2dSame"]),
        "bn_act": _types(layers, ["BatchNormAct2d", "SyncBatchNormAct", "FrozenBatchNormAct2d", "FrozenBatchNorm2d"]),
        "linear": _types(layers, ["Linear"]),
        "pools": _types(layers, ["MaxPool2dSame", "AvgPool2dSame"]),
        # convs that standardize each filter over its inputs (BiT, NFNet); see ``layers.fold_weight_standardization``
        "std_convs": _types(layers, ["StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame"]),
        "group_norms": _types(layers, ["GroupNorm", "GroupNormAct", "GroupNorm1", "GroupNorm1Act"]),
        "cond_convs": _types(layers, ["CondConv2d"]),
    }


def _timm_types(role: str) -> tuple[type, ...]:
    return _timm()[role] if "timm.layers" in sys.modules else ()


def is_std_conv(m: nn.Module | None) -> bool:
    """Whether ``m`` is a weight-standardized conv (timm's StdConv2d family: surgery folds it into a plain conv)."""
    return type(m) in _timm_types("std_convs")


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_elementwise_module(m: nn.Module) -> bool:
    """Whether ``m`` acts on every element alone (activations, dropout, identity)."""
    if type(m) in _ELEMENTWISE_MODULES or type(m) in _timm_types("elementwise"):
        return True
    if isinstance(m, nn.PReLU):
        return m.num_parameters == 1
    return False


# ---------------------------------------------------------------------------------------------------------------
# Rules


def _layer_input(prop: Propagator, node: fx.Node, x: Any, dim: int, n: int) -> Any:
    """The input ids of a layer reading channels on ``dim``: ``x``, or ``n`` fresh frozen ids when ``x`` is
    untracked or tracked on another dim with every channel kept whole anyway (a model input reshaped: a signal
    (N, L) viewed as (N, 1, L), tokens (N, T, F) read by a linear); the layer's outputs stay prunable."""
    if isinstance(x, Chan) and x.dim != dim and all(prop.uf.is_frozen(int(i)) for i in x.ids):
        x = None
    if x is None:
        return Chan(dim, prop.uf.new(n, frozen=f"input of {node.target} comes from an untracked op"))
    return x


def _conv_like(prop: Propagator, name: str, m: nn.Module, x: Chan, kind: LayerKind, spatial: int) -> Chan:
    """The ids of a conv or transposed conv (dense, depthwise with a channel multiplier, grouped) fed ``x``."""
    rec = prop.get_record(name)
    if rec is not None:  # module called again: same filters, inputs coupled position by position
        prop.uf.union_arrays(rec.in_ids, x.ids)
        rec.spatial += spatial
        return Chan(1, rec.out_ids)
    g, cin, cout = m.groups, m.in_channels, m.out_channels
    in_pg, out_pg = cin // g, cout // g
    out = prop.uf.new(cout)
    if g == 1:
        mode = "dense"
    elif in_pg == 1:
        # depthwise (with channel multiplier out_pg): output k*out_pg+t belongs to input k's unit
        mode = "depthwise"
        prop.uf.union_arrays(out, np.repeat(x.ids, out_pg))
    else:
        # grouped: remove the same positions from every group so groups stay equal
        mode = "grouped"
        prop.uf.union_arrays(x.ids, np.tile(x.ids[:in_pg], g))
        prop.uf.union_arrays(out, np.tile(out[:out_pg], g))
    prop.record(
        name,
        kind,
        out_ids=out,
        in_ids=x.ids,
        mode=mode,
        groups=g,
        kernel=int(math.prod(m.kernel_size)),
        spatial=spatial,
        bias=m.bias is not None,
    )
    return Chan(1, out)


def conv_rule(prop: Propagator, node: fx.Node, m: nn.Module, x: Any) -> Any:
    """A conv (dense, depthwise with a channel multiplier, grouped): consumes input ids, makes one id per filter."""
    shape = prop.shape(node)
    x = _layer_input(prop, node, x, 1, m.in_channels)
    if not (isinstance(x, Chan) and x.dim == 1 and len(x.ids) == m.in_channels):
        return prop.unknown(node, "conv input channels are not on dim 1")
    spatial = prop.per_sample(shape, int(math.prod(shape[2:]))) if isinstance(shape, tuple) else 1
    return _conv_like(prop, str(node.target), m, x, LayerKind.CONV, spatial)


def conv_transpose_rule(prop: Propagator, node: fx.Node, m: nn.Module, x: Any) -> Any:
    """A transposed conv (dense, depthwise, grouped): like a conv, with its cost counted per input position."""
    x = _layer_input(prop, node, x, 1, m.in_channels)
    if not (isinstance(x, Chan) and x.dim == 1 and len(x.ids) == m.in_channels) or len(node.args) != 1:
        return prop.unknown(node, "transposed conv input channels are not on dim 1 (or an output_size is given)")
    in_shape = prop.shape(node.args[0])
    spatial = prop.per_sample(in_shape, int(math.prod(in_shape[2:]))) if isinstance(in_shape, tuple) else 1
    return _conv_like(prop, str(node.target), m, x, LayerKind.CONV_TRANSPOSE, spatial)


def cond_conv_rule(prop: Propagator, node: fx.Node, m: nn.Module, x: Any) -> Any:
    """timm's CondConv2d ``(x, routing_weights)``: channels like a conv's; the routing weights pick a mixture of
    its experts per sample, so the experts (their producer's outputs) are kept whole."""
    if len(node.args) != 2 or node.kwargs:
        return prop.unknown(node, "CondConv2d called without (x, routing_weights)")
    prop.freeze(node, prop.val(node.args[1]), "routing weights of a CondConv2d (its experts are kept whole)")
    x = _layer_input(prop, node, x, 1, m.in_channels)
    shape = prop.shape(node)
    if not (isinstance(x, Chan) and x.dim == 1 and len(x.ids) == m.in_channels and isinstance(shape, tuple)):
        return prop.unknown(node, "CondConv2d input channels are not on dim 1")
    rec = prop.get_record(str(node.target))
    spatial = prop.per_sample(shape, int(math.prod(shape[2:])))
    out = _conv_like(prop, str(node.target), m, x, LayerKind.COND_CONV, spatial)
    if rec is None:
        prop.get_record(str(node.target)).extra["experts"] = int(m.num_experts)
    return out


def linear_rule(prop: Propagator, node: fx.Node, m: nn.Module, x: Any) -> Any:
    """A linear layer on the last dim (tokens: every other dim, per model sample)."""
    shape = prop.shape(node)
    if isinstance(shape, tuple):
        x = _layer_input(prop, node, x, len(shape) - 1, m.in_features)
    if not (
        isinstance(x, Chan) and isinstance(shape, tuple) and x.dim == len(shape) - 1 and len(x.ids) == m.in_features
    ):
        return prop.unknown(node, "linear input features are not the tracked last dimension")
    name = str(node.target)
    tokens = prop.per_sample(shape, int(math.prod(shape[1:-1])) if len(shape) > 2 else 1)
    rec = prop.get_record(name)
    if rec is not None:
        prop.uf.union_arrays(rec.in_ids, x.ids)
        rec.spatial += tokens
        return Chan(x.dim, rec.out_ids)
    out = prop.uf.new(m.out_features)
    prop.record(name, LayerKind.LINEAR, out_ids=out, in_ids=x.ids, spatial=tokens, bias=m.bias is not None)
    return Chan(x.dim, out)


def norm_rule(prop: Propagator, node: fx.Node, m: nn.Module, x: Any) -> Any:
    """Per-channel state on dim 1 (a norm, a layer scale): ids pass; parameters and buffers of the channel count
    are sliced with the channels (``LayerKind.NORM``). timm's norm+act modules: their act must be elementwise."""
    if x is None:
        return None
    if not (isinstance(x, Chan) and x.dim == 1):
        return prop.unknown(node, "norm input channels are not on dim 1")
    act = getattr(m, "act", None)
    drop = getattr(m, "drop", None)
    for sub in (act, drop):
        if sub is not None and not is_elementwise_module(sub):
            return prop.unknown(node, f"{type(m).__name__} holds a non-elementwise {type(sub).__name__}")
    name = str(node.target)
    rec = prop.get_record(name)
    if rec is not None:
        prop.uf.union_arrays(rec.out_ids, x.ids)
    else:
        prop.record(name, LayerKind.NORM, out_ids=x.ids)
    return x


def group_norm_rule(prop: Propagator, node: fx.Node, m: nn.GroupNorm, x: Any) -> Any:
    """GroupNorm: statistics are per group, so removing whole groups leaves the others exact (a group is one
    unit); with one group it normalizes across all channels and freezes them."""
    if m.num_groups <= 1:
        return _across_channels(prop, node, m, x)
    if isinstance(x, Chan) and x.dim == 1 and len(x.ids) == m.num_channels:
        groups = x.ids.reshape(m.num_groups, -1)
        for j in range(1, groups.shape[1]):
            prop.uf.union_arrays(groups[:, 0], groups[:, j])
    return norm_rule(prop, node, m, x)


def instance_norm_rule(prop: Propagator, node: fx.Node, m: nn.Module, x: Any) -> Any:
    """InstanceNorm: per channel; its parameters or statistics (if any) are sliced like a norm's, and its
    ``num_features`` follows the channels kept even without them."""
    return norm_rule(prop, node, m, x)


def passthrough_rule(prop: Propagator, node: fx.Node, m: nn.Module, x: Any) -> Any:
    """A per-channel module without channel-indexed state (activation, pooling, upsampling): ids pass."""
    return prop.passthrough(node, x)


def _elementwise(prop: Propagator, node: fx.Node, m: nn.Module, x: Any) -> Any:
    if is_elementwise_module(m):
        return prop.passthrough(node, x)
    if isinstance(m, nn.PReLU) and isinstance(x, Chan) and x.dim == 1 and len(x.ids) == m.num_parameters:
        return norm_rule(prop, node, m, x)  # one slope per channel: sliced with the channels, like a norm's
    return prop.unknown(node, f"module {type(m).__name__} is not modelled")


def _flatten(prop: Propagator, node: fx.Node, m: nn.Flatten, x: Any) -> Any:
    return prop.flatten(node, x, m.start_dim, m.end_dim)


def _across_channels(prop: Propagator, node: fx.Node, m: nn.Module, x: Any) -> Any:
    return prop.unknown(node, f"{type(m).__name__} normalizes across channels")


def pad_channels_rule(prop: Propagator, node: fx.Node, m: nn.Module, x: Any) -> Any:
    """A module that zero-pads channels by its attributes ``pad_left`` / ``pad_right`` (and may change spatial
    dims): the padded positions are prunable ids, and surgery shrinks the pad widths (``LayerKind.PAD``)."""
    if not (isinstance(x, Chan) and x.dim == 1):
        return prop.unknown(node, "shortcut input channels are not on dim 1")
    left, right = prop.uf.new(m.pad_left), prop.uf.new(m.pad_right)
    prop.record(
        str(node.target), LayerKind.PAD, out_ids=np.concatenate([left, right]), extra={"n_left": int(m.pad_left)}
    )
    return Chan(1, np.concatenate([left, x.ids, right]))


# ---------------------------------------------------------------------------------------------------------------
# Registration. Convs and linears match exact types only: a subclass may transform its weight (weight
# standardisation...), so only these are known to be linear per input channel. Weight-standardized convs are not
# (removing an input changes every filter's statistics), but they are modelled: surgery folds the standardization
# into a plain conv first. ``leaf=False``: torch.nn built-ins are leaves anyway; timm's activations are traced.

RULES.module(_CONVS, conv_rule, exact=True)
RULES.module((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), conv_transpose_rule, exact=True)
RULES.module(nn.Linear, linear_rule, exact=True)
RULES.module(_BATCHNORMS, norm_rule)
RULES.module(nn.GroupNorm, group_norm_rule)
RULES.module((nn.InstanceNorm1d, nn.InstanceNorm2d), instance_norm_rule, leaf=False)
RULES.module(_ELEMENTWISE_MODULES, passthrough_rule, exact=True, leaf=False)
RULES.module(nn.PReLU, _elementwise, leaf=False)
RULES.module(_SPATIAL_MODULES, passthrough_rule, leaf=False)
RULES.module(nn.Flatten, _flatten, leaf=False)
RULES.module(nn.LayerNorm, _across_channels, leaf=False)


def _register_timm(table: Any) -> None:
    """timm's layers (registered once timm is imported; lcp itself does not import it)."""
    t = _timm()
    table.module(t["convs"] + t["std_convs"], conv_rule, exact=True)
    table.module(t["linear"], linear_rule, exact=True)
    table.module(t["bn_act"], norm_rule)
    table.module(t["group_norms"], group_norm_rule)
    table.module(t["elementwise"], passthrough_rule, exact=True, leaf=False)
    table.module(t["pools"], passthrough_rule)
    table.module(t["cond_convs"], cond_conv_rule, exact=True)


RULES.when_imported("timm.layers", _register_timm)
RULES.when_imported(
    "torchvision.ops.misc",
    lambda t: t.module(_types(sys.modules["torchvision.ops.misc"], ["FrozenBatchNorm2d"]), norm_rule),
)

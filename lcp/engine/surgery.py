"""Build the physically smaller network from a plan, and verify it against the masked original."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from lcp.errors import LcpError
from lcp.engine.graph import ChannelGraph, LcpTracer
from lcp.engine.rules import STD_CONVS


def _index(t: torch.Tensor, dim: int, keep: np.ndarray) -> torch.Tensor:
    return t.detach().index_select(dim, torch.as_tensor(keep, dtype=torch.long, device=t.device)).clone()


def _set_param(m: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(m, name)
    if isinstance(old, nn.Parameter):
        setattr(m, name, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        setattr(m, name, value)


def _prune_conv(m: nn.Conv2d, mode: str, keep_out: np.ndarray, keep_in: np.ndarray) -> None:
    w = _index(m.weight, 0, keep_out)
    if mode == "dense":
        w = _index(w, 1, keep_in)
    elif mode == "grouped":
        in_pg = m.in_channels // m.groups
        w = _index(w, 1, keep_in[keep_in < in_pg])
    _set_param(m, "weight", w)
    if m.bias is not None:
        _set_param(m, "bias", _index(m.bias, 0, keep_out))
    if mode == "depthwise":
        m.groups = len(keep_in)
    m.in_channels, m.out_channels = len(keep_in), len(keep_out)


def fold_weight_standardization(m: nn.Conv2d) -> nn.Conv2d:
    """A plain conv that computes what weight-standardized ``m`` (timm's StdConv2d, ScaledStdConv2d) computes.

    Such a conv normalizes every filter over its inputs, so removing an input channel would change every
    filter: the pruned network could not equal the masked original. With the standardized weight frozen into
    a plain conv, removing inputs is exact. Fine-tuning then trains plain weights (no re-standardization).
    """
    with torch.no_grad():
        gain = (m.gain * m.scale).reshape(-1) if isinstance(getattr(m, "gain", None), torch.Tensor) else None
        w = F.batch_norm(m.weight.reshape(1, m.out_channels, -1), None, None, weight=gain, training=True,
                         momentum=0.0, eps=m.eps).reshape_as(m.weight)
    cls: type[nn.Conv2d] = nn.Conv2d
    if getattr(m, "same_pad", False):  # dynamic TF "SAME" padding (its static padding is 0)
        from timm.layers import Conv2dSame
        cls = Conv2dSame
    new = cls(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
              dilation=m.dilation, groups=m.groups, bias=m.bias is not None,
              device=m.weight.device, dtype=m.weight.dtype)
    new.weight = nn.Parameter(w.detach().clone(), requires_grad=m.weight.requires_grad)
    if m.bias is not None:
        new.bias = nn.Parameter(m.bias.detach().clone(), requires_grad=m.bias.requires_grad)
    new.train(m.training)
    return new


def _replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def _prune_linear(m: nn.Linear, keep_out: np.ndarray, keep_in: np.ndarray) -> None:
    _set_param(m, "weight", _index(_index(m.weight, 0, keep_out), 1, keep_in))
    if m.bias is not None:
        _set_param(m, "bias", _index(m.bias, 0, keep_out))
    m.in_features, m.out_features = len(keep_in), len(keep_out)


def _prune_norm(m: nn.Module, n: int, keep: np.ndarray) -> None:
    for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
        if t is not None and t.dim() >= 1 and t.shape[0] == n:
            _set_param(m, name, _index(t, 0, keep))
    for attr in ("num_features", "num_channels"):
        if hasattr(m, attr):
            setattr(m, attr, len(keep))
    if isinstance(m, nn.GroupNorm):  # whole groups are kept (ops.Propagator.group_norm)
        m.num_groups = len(keep) // (n // m.num_groups)


def apply_plan(graph: ChannelGraph, removed: np.ndarray) -> nn.Module:
    """A pruned copy of ``graph.model`` without the units in ``removed`` (the original is not touched).

    The result is the model's own class with smaller modules, or a ``torch.fx.GraphModule`` when constants
    in the forward code (split sizes) had to be rewritten.
    """
    pruned = copy.deepcopy(graph.model)
    modules = dict(pruned.named_modules())
    split_sizes: dict[str, dict[int, tuple[int, int]]] = {}  # node -> piece -> (old, new) size
    slices: dict[str, tuple[int, slice]] = {}
    for ri, rec in enumerate(graph.records):
        keep_out = graph.kept_positions(removed, ri, "out") if rec.out_ids is not None else None
        keep_in = graph.kept_positions(removed, ri, "in") if rec.in_ids is not None else None
        if rec.kind == "conv":
            m = modules[rec.name]
            if type(m) in STD_CONVS:  # always, so a pruned network's params do not depend on which inputs went
                m = modules[rec.name] = fold_weight_standardization(m)
                _replace_module(pruned, rec.name, m)
            _prune_conv(m, rec.mode, keep_out, keep_in)
        elif rec.kind == "linear":
            _prune_linear(modules[rec.name], keep_out, keep_in)
        elif rec.kind == "norm":
            _prune_norm(modules[rec.name], len(rec.out_ids), keep_out)
        elif rec.kind == "pad":
            m = modules[rec.name]
            n_left = rec.extra["n_left"]
            m.pad_left = int((keep_out < n_left).sum())
            m.pad_right = int((keep_out >= n_left).sum())
        elif rec.kind == "split":
            split_sizes.setdefault(rec.extra["node"], {})[rec.extra["piece"]] = (len(rec.out_ids), len(keep_out))
        elif rec.kind == "slice":
            start = int((keep_in < rec.extra["start"]).sum())
            stop = int((keep_in < rec.extra["stop"]).sum())
            if (start, stop) != (rec.extra["start"], rec.extra["stop"]) or len(keep_in) != len(rec.in_ids):
                slices[rec.extra["node"]] = (rec.extra["pos"], slice(start, stop))
    patches = {node: [new for _, (old, new) in sorted(p.items())] for node, p in split_sizes.items()
               if any(old != new for old, new in p.values())}
    if patches or slices:
        pruned = _patch_graph(pruned, patches, slices)
    return pruned


def _patch_graph(model: nn.Module, patches: dict[str, list[int]],
                 slices: dict[str, tuple[int, slice]]) -> fx.GraphModule:
    """Re-trace the pruned model and rewrite constant split sizes and channel slice bounds."""
    # traced in eval mode, like the channel graph: `self.training` branches in forward code (functional
    # dropout, drop-path) are fixed to their eval behaviour in the rewritten graph
    was_training = model.training
    model.eval()
    tracer = LcpTracer()
    graph = tracer.trace(model)
    model.train(was_training)
    nodes = {n.name: n for n in graph.nodes}
    for name, (pos, new) in slices.items():
        node = nodes.get(name)
        if node is None:
            raise LcpError(f"internal: slice node {name} not found when re-tracing the pruned model")
        idx = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        idx = tuple(new if i == pos else v for i, v in enumerate(idx))
        node.args = (node.args[0], idx)
    for name, sizes in patches.items():
        node = nodes.get(name)
        if node is None:
            raise LcpError(f"internal: split node {name} not found when re-tracing the pruned model")
        if "split_size_or_sections" in node.kwargs or "split_size" in node.kwargs:
            key = "split_size_or_sections" if "split_size_or_sections" in node.kwargs else "split_size"
            node.kwargs = {**node.kwargs, key: sizes}
        else:
            args = list(node.args)
            args[1] = sizes
            node.args = tuple(args)
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    # GraphModule keeps only the submodules forward calls: bring back the others (and their parameters)
    for name, m in model.named_modules():
        if name:
            try:
                gm.get_submodule(name)
            except AttributeError:
                gm.add_submodule(name, m)
    gm.recompile()
    gm.train(was_training)
    return gm


# ---------------------------------------------------------------------------------------------------------------
# Verification


@dataclass
class Verification:
    """Result of comparing the pruned network with the masked original on random input."""

    max_rel_error: float
    output_shapes_match: bool
    ok: bool

    def __str__(self) -> str:
        return f"{'ok' if self.ok else 'FAILED'} (max relative error {self.max_rel_error:.2e})"


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    return []


def input_mask_hook(mask: torch.Tensor, dim: int) -> Callable[..., tuple]:
    """A forward pre-hook that multiplies a module's first input by ``mask`` along ``dim`` (masked originals)."""

    def pre_hook(m: nn.Module, args: tuple) -> tuple:
        x = args[0]
        shape = [1] * x.dim()
        shape[dim] = -1
        return (x * mask.view(shape),) + tuple(args[1:])

    return pre_hook


def masked_model(graph: ChannelGraph, removed: np.ndarray) -> tuple[nn.Module, list]:
    """A float64 copy of the original whose consumers see removed channels as zeros."""
    ref = copy.deepcopy(graph.model).double().eval()
    modules = dict(ref.named_modules())
    handles = []
    for ri, rec in enumerate(graph.records):
        if rec.kind not in ("conv", "linear") or rec.in_ids is None:
            continue
        units = graph.axis_units[(ri, "in")]
        mask = torch.as_tensor(~removed[units], dtype=torch.float64)
        if bool(mask.all()):
            continue
        handles.append(modules[rec.name].register_forward_pre_hook(
            input_mask_hook(mask, 1 if rec.kind == "conv" else -1)))
    return ref, handles


def verify(graph: ChannelGraph, removed: np.ndarray, pruned: nn.Module, *, rtol: float = 1e-4,
           seed: int = 0) -> Verification:
    """Compare ``pruned`` with the original whose removed channels are zeroed where they enter consumers."""
    gen = torch.Generator().manual_seed(seed)
    inputs = tuple(torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in graph.example_inputs)
    ref, handles = masked_model(graph, removed)
    test = copy.deepcopy(pruned).double().eval()
    with torch.no_grad():
        a = _tensors(ref(*inputs))
        b = _tensors(test(*inputs))
    for h in handles:
        h.remove()
    shapes = len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
    if not shapes:
        return Verification(float("inf"), False, False)
    err = 0.0
    for x, y in zip(a, b):
        scale = float(x.abs().max()) if x.numel() else 0.0
        diff = float((x - y).abs().max()) if x.numel() else 0.0
        err = max(err, diff / max(scale, 1e-12))
    return Verification(err, True, err <= rtol)

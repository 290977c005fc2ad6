"""Build the physically smaller network from a plan, and verify it against the masked original."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.utils._pytree import tree_map_only

from lcp.engine.depth import depth_units, empty_groups, remove_branches
from lcp.engine.graph import ChannelGraph, retrace
from lcp.engine.layers import LAYERS, Rewrite
from lcp.engine.rules import RULES, RuleTable
from lcp.errors import LcpError


def apply_plan(graph: ChannelGraph, removed: np.ndarray) -> nn.Module:
    """A pruned copy of ``graph.model`` without the units in ``removed`` (the original is not touched).

    The result is the model's own class with smaller modules, or a ``torch.fx.GraphModule`` when constants
    in the forward code (split sizes) had to be rewritten.
    """
    pruned = copy.deepcopy(graph.model)
    job = Rewrite(pruned, dict(pruned.named_modules()))
    empty = empty_groups(graph, removed)
    units = depth_units(graph) if empty else {}
    emptied = [units[g] for g in empty if g in units]
    skip = {name for d in emptied for name in (d.consumer, *d.dying)}  # replaced or deleted with their branch
    for ri, rec in enumerate(graph.records):
        if rec.name in skip:
            continue
        keep_out = graph.kept_positions(removed, ri, "out") if rec.out_ids is not None else None
        keep_in = graph.kept_positions(removed, ri, "in") if rec.in_ids is not None else None
        LAYERS[rec.kind].prune(job, rec, keep_out, keep_in)
    patches = {
        node: [new for _, (old, new) in sorted(p.items())]
        for node, p in job.split_sizes.items()
        if any(old != new for old, new in p.values())
    }
    if patches or job.slices:
        pruned = _patch_graph(job.model, patches, job.slices, graph.rules)
    if emptied:
        consumers, dims = {}, {}
        for d in emptied:
            ri = graph.record_index[d.consumer]
            consumers[d.consumer] = len(graph.kept_positions(removed, ri, "out"))
            dims[d.consumer] = LAYERS[graph.records[ri].kind].input_dim
            bias = getattr(pruned.get_submodule(d.consumer), "bias", None)
            if isinstance(bias, torch.Tensor):  # the consumer's bias on its kept outputs (the rest of it was skipped)
                keep = torch.as_tensor(graph.kept_positions(removed, ri, "out"))
                pruned.get_submodule(d.consumer).bias = nn.Parameter(bias.detach()[keep].clone())
        pruned = remove_branches(pruned, consumers, graph.rules, dims)
    return pruned


def _patch_graph(
    model: nn.Module, patches: dict[str, list[int]], slices: dict[str, tuple[int, slice]], rules: RuleTable = RULES
) -> fx.GraphModule:
    """Re-trace the pruned model and rewrite constant split sizes and channel slice bounds."""
    # traced in eval mode, like the channel graph: `self.training` branches in forward code (functional
    # dropout, drop-path) are fixed to their eval behaviour in the rewritten graph
    gm = retrace(model, rules)
    nodes = {n.name: n for n in gm.graph.nodes}
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
    gm.recompile()
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


def output_tensors(x: Any) -> list[torch.Tensor]:
    """The tensors of a model output (nested tuples, lists and dicts flattened)."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in output_tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in output_tensors(v)]
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
        dim = LAYERS[rec.kind].input_dim
        if dim is None or rec.in_ids is None:
            continue
        units = graph.axis_units[(ri, "in")]
        mask = torch.as_tensor(~removed[units], dtype=torch.float64)
        if bool(mask.all()):
            continue
        handles.append(modules[rec.name].register_forward_pre_hook(input_mask_hook(mask, dim)))
    return ref, handles


def verify(
    graph: ChannelGraph, removed: np.ndarray, pruned: nn.Module, *, rtol: float = 1e-4, seed: int = 0
) -> Verification:
    """Compare ``pruned`` with the original whose removed channels are zeroed where they enter consumers."""
    gen = torch.Generator().manual_seed(seed)
    inputs = tree_map_only(  # random floats, also inside lists and dicts; integer inputs (token ids...) as given
        torch.Tensor,
        lambda x: torch.randn(x.shape, generator=gen, dtype=torch.float64) if x.is_floating_point() else x.clone(),
        tuple(graph.example_inputs),
    )
    ref, handles = masked_model(graph, removed)
    test = copy.deepcopy(pruned).double().eval()
    with torch.no_grad():
        a = output_tensors(ref(*inputs))
        try:
            b = output_tensors(test(*inputs))
        except Exception as e:
            raise LcpError(
                f"refusing the pruned {type(graph.model).__name__}: it does not run ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); its forward code probably sizes a tensor by a width "
                "that was cut (e.g. a reshape to sizes read from x.shape): keep that layer whole with --ignore"
            ) from None
        finally:
            for h in handles:
                h.remove()
    shapes = len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
    if not shapes:
        return Verification(float("inf"), False, False)
    err = relative_error(a, b)
    return Verification(err, True, err <= rtol)


def relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest ``max|x - y| / max|x|`` over the output pairs; inf where an output is not finite (a NaN compares
    as no difference, so it must never reach the maximum)."""
    err = 0.0
    for x, y in zip(a, b):
        if not x.numel():
            continue
        if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())):
            return float("inf")
        err = max(err, float((x - y).abs().max()) / max(float(x.abs().max()), 1e-12))
    return err

"""Models torch.fx cannot trace whole (detectors): prune their traceable parts in place.

A torchvision detector's ``forward`` takes a list of images and runs Python control flow (image batching,
anchors, box decoding, non-maximum suppression) that ``torch.fx`` cannot trace. Its parts can: the backbone
with its feature pyramid takes a tensor and returns a dict of feature maps; a box head takes the pooled regions.
``traceable_parts`` runs the model once on the example input, records what each submodule is called with, and
walks the module tree from the root: a submodule called with tensors only that traces and has prunable units is
a part; one that does not trace (or takes lists, image batches, ...) is looked into, its children in turn.
``prune_parts`` cuts every part to the budget (each part keeps ``budget`` of its own cost, so the parts
together keep that fraction of theirs), verifies each against its masked original on the inputs it was
called with, and puts the pruned parts into a copy of the model. What is left outside the parts (pre- and
post-processing, heads that take lists) runs unchanged and is not counted.

A part's outputs keep their channels (they are its graph's outputs), so whatever consumes them outside the
part is untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from lcp.cut.pruner import PruneResult
from lcp.engine.cost import count_macs, count_params
from lcp.engine.graph import ChannelGraph, NoMatch, UntraceableModel, build_graph, no_match, run_failure
from lcp.engine.modes import modes_kept
from lcp.errors import LcpError, UnreachableBudget


@dataclass
class Part:
    """A traceable submodule: its dotted name, the module, the inputs of its first call (traced and verified on),
    its graph, and every call's inputs, the later ones as meta tensors (a head run once per feature level: its
    MACs are those of every call)."""

    name: str
    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    graph: ChannelGraph
    calls: tuple[tuple, ...] = ()


@dataclass
class PartsResult:
    """The whole model with its parts pruned; ``parts``: per part name, the part's own ``PruneResult``."""

    model: nn.Module
    parts: dict[str, PruneResult]
    macs_base: int  # the parts' MACs on the example input (every call), before and after (the rest is not counted)
    macs_pruned: int
    params_base: int  # the whole model's parameters, before and after
    params_pruned: int
    untraced: str  # why the whole model does not trace
    info: dict = field(default_factory=dict)

    @property
    def macs_ratio(self) -> float:
        return self.macs_pruned / self.macs_base

    @property
    def params_ratio(self) -> float:
        return self.params_pruned / self.params_base


def _calls(model: nn.Module, example_inputs: tuple) -> dict[str, list[tuple]]:
    """What every submodule is called with when ``model`` runs on ``example_inputs`` (eval, no grad): the first
    call's arguments, then every later call's as meta tensors (their shapes: what MACs depend on, no memory)."""
    seen: dict[str, list[tuple]] = {}

    def record(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(module: nn.Module, args: tuple) -> None:  # returns None: the call's inputs stay as they are
            if name in seen:
                args = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)
            seen.setdefault(name, []).append(args)

        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(*example_inputs)
    except Exception as e:
        raise run_failure(model, example_inputs, e) from None
    finally:
        for h in hooks:
            h.remove()
    return seen


def _nonempty_tensor(a: object) -> bool:
    return isinstance(a, torch.Tensor) and a.numel() > 0


def traceable_parts(
    model: nn.Module, example_inputs: Sequence[Any], ignore: Sequence[str] = (), *, strict: bool = True
) -> list[Part]:
    """The largest submodules of ``model`` that take tensors, trace and have prunable units (see module doc);
    ``ignore``: globs of full module names (``"backbone.body.5.*"``, ``"*body.5.*"``) whose output channels are
    kept, or that keep a whole submodule out of the parts; with ``strict`` a glob that matches no conv or linear
    module of any part (and keeps no submodule whole) is refused, as ``build_graph`` refuses it."""
    with modes_kept(model):
        model.eval()
        calls = _calls(model, tuple(example_inputs))
    parts: list[Part] = []
    layers: list[str] = []  # full names of the conv/linear modules of every traced submodule
    used: set[str] = set()  # the globs that matched something

    def visit(prefix: str, module: nn.Module) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            args = calls[name][0] if name in calls else None
            whole = {g for g in ignore if fnmatchcase(name, g)}
            used.update(whole)
            if whole:
                continue  # kept whole (--ignore)
            if next(child.parameters(), None) is None:  # nothing to prune in it (frozen weights are pruned too)
                used.update(g for g in ignore for n, _ in child.named_modules(prefix=name) if fnmatchcase(n, g))
                continue
            if args is None:  # never called itself: a container whose layers its parent runs one by one
                visit(name, child)
                continue
            if any(isinstance(a, torch.Tensor) and a.numel() == 0 for a in args):
                continue  # called on nothing (no region survived on the example input): cannot be verified
            if args and all(isinstance(a, torch.Tensor) for a in args):
                try:
                    graph = build_graph(child, args, ignore=ignore, strict=False, prefix=name + ".")
                except LcpError:
                    graph = None
                if graph is not None:
                    layers.extend(f"{name}.{r.name}" for r in graph.records if r.kind.has_filters)
                    if graph.prunable_units:
                        counted = [tuple(c) for c in calls[name] if c and all(_nonempty_tensor(t) for t in c)]
                        parts.append(Part(name, child, tuple(args), graph, tuple(counted)))
                    continue  # traced: its children's outputs are inside it, none is freer than the whole
            visit(name, child)

    visit("", model)
    unused = [g for g in ignore if g not in used and not any(fnmatchcase(n, g) for n in layers)]
    if strict and unused:
        raise NoMatch(no_match("--ignore", unused[0], layers, type(model).__name__))
    return parts


def prune_parts(
    model: nn.Module,
    example_inputs: Sequence[Any],
    cut: Callable[[ChannelGraph, str], PruneResult],
    *,
    ignore: Sequence[str] = (),
    untraced: str = "",
    strict: bool = True,
) -> PartsResult:
    """Cut every traceable part with ``cut(graph, part_name)`` and return a copy of ``model`` holding the pruned
    parts, every submodule's train/eval flag as in ``model`` (``ignore`` and ``strict``: ``traceable_parts``).
    A part whose budget is out of reach is refused with its name (``UnreachableBudget``)."""
    parts = traceable_parts(model, example_inputs, ignore, strict=strict)
    if not parts:
        raise LcpError(
            f"{type(model).__name__} does not trace whole ({untraced}) and no part of it that takes tensors "
            "traces with prunable channels"
        )
    pruned_model = copy.deepcopy(model)
    results: dict[str, PruneResult] = {}
    macs_base = macs_pruned = 0
    for part in parts:
        try:
            res = cut(part.graph, part.name)
        except UnreachableBudget as e:
            raise UnreachableBudget(f"part {part.name}: {e}", e.lowest) from None
        results[part.name] = res
        for args in part.calls or (part.inputs,):
            args = tuple(torch.zeros(a.shape, dtype=a.dtype, device=part.inputs[0].device) if a.is_meta else a
                         for a in args)  # fmt: skip
            n = args[0].shape[0] if args[0].dim() else 1
            macs_base += count_macs(part.module, args) * n
            macs_pruned += count_macs(res.model, args) * n
        parent_name, _, attr = part.name.rpartition(".")
        parent = pruned_model.get_submodule(parent_name) if parent_name else pruned_model
        setattr(parent, attr, res.model)
    return PartsResult(
        pruned_model, results, macs_base, macs_pruned, count_params(model), count_params(pruned_model), untraced
    )


__all__ = ["Part", "PartsResult", "UntraceableModel", "prune_parts", "traceable_parts"]

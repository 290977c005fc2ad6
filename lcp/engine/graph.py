"""Channel-dependency graph: which channels of a network must be removed together.

Every channel of every tensor gets an integer id; the traced graph says how ids flow (``lcp.engine.rules``):
convs and linears consume their input ids and produce fresh ids, per-channel ops pass ids through,
elementwise ops between tensors unite ids position by position, concat/split join and cut id lists.
A connected set of ids is a *channel unit*: removing it removes every producer filter, norm channel and
consumer input slice in it. Units with the same producer modules form a *group* (the thing that carries
LeGR's per-layer ``(alpha, kappa)``). Any op the engine does not model freezes the ids it touches.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils._pytree import tree_leaves

from lcp.engine.modes import modes_kept
from lcp.engine.rules import RULES, Propagator, RuleTable
from lcp.engine.types import Chan, Frozen, Group, LayerKind, Record, UnionFind, Unit, floor_keep
from lcp.errors import LcpError

__all__ = [
    "Chan",
    "ChannelGraph",
    "Frozen",
    "Group",
    "LayerKind",
    "LcpTracer",
    "Record",
    "UnionFind",
    "Unit",
    "build_graph",
    "check_batch",
    "floor_keep",
    "no_match",
    "retrace",
    "root_cause",
    "run_failure",
    "trace",
]  # the data types live in lcp.engine.types


class ChannelGraph:
    """The channel units, groups and module records of one traced model (see module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        gm: fx.GraphModule,
        records: list[Record],
        uf: UnionFind,
        frozen_ops: list[Frozen],
        rules: RuleTable = RULES,
    ):
        self.model = model
        self.rules = rules  # the rules it was built with (surgery re-traces with them)
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
                        units.append(Unit(index=u, root=root, frozen=uf.frozen.get(root), key=f"{rec.name}:{axis}:{p}"))
                    idx[p] = u
                self.axis_units[(ri, axis)] = idx
                counts = np.bincount(idx, minlength=len(units))
                for u in np.nonzero(counts)[0].tolist():
                    units[u].members.append((ri, axis, int(counts[u])))
                if axis == "out" and rec.kind.has_filters:
                    order = np.argsort(idx, kind="stable")
                    bounds = np.searchsorted(idx[order], np.arange(len(units) + 1))
                    for u in np.nonzero(counts)[0].tolist():
                        units[u].producers.append((ri, order[bounds[u] : bounds[u + 1]]))
        self.units = units
        # groups: units with the same producer modules, in order of first appearance
        groups: dict[tuple[str, ...], Group] = {}
        for unit in units:
            if not unit.prunable:
                continue
            names = tuple(
                sorted({self.records[ri].name for ri, _ in unit.producers}, key=lambda n: self.record_index[n])
            )
            g = groups.get(names)
            if g is None:
                label = names[0] if len(names) == 1 else f"{names[0]}+{len(names) - 1}"
                g = groups[names] = Group(index=len(groups), name=label, producers=names)
            g.units.append(unit.index)
            unit.group = g.index
        self.groups = list(groups.values())
        #: the largest fraction of each group's units a cut may remove (``limit_removal``; 1: no cap)
        self.max_removal = np.ones(len(self.groups))
        #: groups a walk may empty, removing a residual branch (``lcp.engine.depth.allow_depth``)
        self.depth = np.zeros(len(self.groups), dtype=bool)
        self.depth_cache: dict | None = None  # ``lcp.engine.depth.depth_units`` of this graph, once found

    def limit_removal(self, caps: Mapping[str, float]) -> None:
        """Cap the fraction of units a cut may remove from the groups that a module matching each glob writes
        (``{"layer1.*": 0.3}``: at most 30% of those channels); a glob that matches no conv or linear module is
        refused. Every walk (the cut, the searches, the agents) keeps ``floors``."""
        for pattern, fraction in caps.items():
            if not 0 <= fraction <= 1:
                raise LcpError(f"--max-removal {pattern}={fraction}: the fraction must be between 0 and 1")
            hit = [g.index for g in self.groups if any(fnmatch.fnmatchcase(n, pattern) for n in g.producers)]
            if not hit:
                layers = [r.name for r in self.records if r.kind.has_filters]
                if not any(fnmatch.fnmatchcase(n, pattern) for n in layers):
                    raise NoMatch(no_match("--max-removal", pattern, layers, type(self.model).__name__))
            self.max_removal[hit] = np.minimum(self.max_removal[hit], fraction)

    def floors(self, min_ratio: float = 0.1, min_channels: int = 2) -> np.ndarray:
        """Units each group keeps at least: ``floor_keep`` of its size, raised by its cap (``limit_removal``)."""
        sizes = np.array([len(g.units) for g in self.groups], dtype=np.int64)
        base = np.array([floor_keep(int(n), min_ratio, min_channels) for n in sizes], dtype=np.int64)
        capped = sizes - np.floor(self.max_removal * sizes + 1e-9).astype(np.int64)
        return np.maximum(base, capped)

    # ------------------------------------------------------------------ queries
    @property
    def prunable_units(self) -> list[int]:
        return [u.index for u in self.units if u.prunable]

    def kept_positions(self, removed: np.ndarray, ri: int, axis: str) -> np.ndarray:
        """Positions of record ``ri`` on ``axis`` that survive when units with ``removed[u]`` are gone."""
        return np.nonzero(~removed[self.axis_units[(ri, axis)]])[0]

    def summary(self) -> str:
        n_prunable = sum(u.prunable for u in self.units)
        return (
            f"{len(self.records)} modules, {len(self.units)} channel units "
            f"({n_prunable} prunable) in {len(self.groups)} groups; "
            f"{len(self.frozen_ops)} ops froze channels"
        )


# --------------------------------------------------------------------------------------------------------------
# Tracing


#: timm no-trace modules whose forward is plain tensor code fx traces fine (timm marks NormFreeBlock for its
#: feature extractor): lcp traces through them so their convs are prunable
_TRACE_THROUGH = ("NormFreeBlock",)


class LcpTracer(fx.Tracer):
    """fx tracer that keeps torch.nn built-ins, timm's no-trace modules and modules with a rule as leaves."""

    def __init__(self, rules: RuleTable = RULES) -> None:
        autowrap: tuple = ()
        try:
            from timm.layers import _fx as timm_fx  # optional dependency: imported only when tracing

            self._timm_leaves = tuple(m for m in timm_fx.get_notrace_modules() if m.__name__ not in _TRACE_THROUGH)
            autowrap = tuple(f for f in timm_fx.get_notrace_functions() if callable(f))
        except Exception:  # timm missing or changed: plain fx rules
            self._timm_leaves = ()
        super().__init__(autowrap_functions=autowrap)
        self._lcp_leaves = rules.leaf_types()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, self._lcp_leaves) or isinstance(m, self._timm_leaves):
            return True
        return super().is_leaf_module(m, qualname)


class UntraceableModel(LcpError):
    """torch.fx cannot trace the model whole (``lcp.cut.parts`` may still prune its traceable parts)."""


class NoMatch(LcpError):
    """A module-name glob the user gave (``--ignore``, ``--max-removal``) matches no conv or linear module: bad
    input, not a property of the model."""


def trace(model: nn.Module, rules: RuleTable = RULES) -> fx.GraphModule:
    """Symbolically trace ``model``; a model that does not trace is refused with the reason."""
    tracer = LcpTracer(rules)
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises many kinds; all mean "cannot see the graph"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UntraceableModel(
            f"cannot trace {type(model).__name__} with torch.fx ({type(e).__name__}: {msg}); "
            "lcp needs a traceable model (register a rule for the module that does not trace, "
            "lcp.register_module_rule, so the tracer keeps it whole)"
        ) from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def retrace(model: nn.Module, rules: RuleTable = RULES) -> fx.GraphModule:
    """:func:`trace` in eval mode (``self.training`` branches fixed to inference; the model's mode is kept),
    keeping every submodule, called or not: a GraphModule keeps only those forward calls, and surgery must not
    lose the others (or their parameters). Surgery rewrites the result's graph and recompiles it."""
    with modes_kept(model):
        model.eval()
        gm = trace(model, rules)
    for name, m in model.named_modules():
        if name:
            try:
                gm.get_submodule(name)
            except AttributeError:
                gm.add_submodule(name, m)
    gm.training = model.training  # its submodules are the model's own, flags as they are
    return gm


def first_tensor(example_inputs: Sequence[Any]) -> torch.Tensor | None:
    """The first tensor among the inputs, also inside lists and dicts (its first dim is the batch)."""
    return next((x for x in tree_leaves(tuple(example_inputs)) if isinstance(x, torch.Tensor)), None)


def _unbatched(example_inputs: Sequence[Any], first: torch.Tensor) -> bool:
    """A list of 3-D tensors: a detector's unbatched images."""
    return isinstance(example_inputs[0], (list, tuple)) and first.dim() == 3


def input_batch(example_inputs: Sequence[Any]) -> int:
    """The batch the inputs hold: the first dim of their first tensor (also inside a list or dict), or 1 when it
    is the first of a list of 3-D tensors (read as a detector's unbatched images) or there is none."""
    first = first_tensor(example_inputs)
    if first is None or first.dim() == 0 or _unbatched(example_inputs, first):
        return 1
    return int(first.shape[0])


def sample_shape(example_inputs: Sequence[Any]) -> tuple[int, ...]:
    """The shape of one sample of the first tensor among the inputs (``input_batch``'s reading); () for none."""
    first = first_tensor(example_inputs)
    if first is None:
        return ()
    return tuple(first.shape if _unbatched(example_inputs, first) else first.shape[1:])


def check_batch(example_inputs: Sequence[Any]) -> None:
    """Refuse example inputs whose first tensor has a batch of 0 (nothing runs, nothing can be counted)."""
    first = first_tensor(example_inputs)
    if first is not None and first.dim() > 0 and first.shape[0] == 0:
        raise LcpError("example inputs need a batch of at least 1")


class _ShapeProp(ShapeProp):
    """ShapeProp that remembers where it is: the module (or op) of the node it runs."""

    where = ""

    def run_node(self, n: fx.Node) -> Any:
        self.where = str(n.target) if n.op == "call_module" else n.name
        return super().run_node(n)


def run_failure(model: nn.Module, example_inputs: Sequence[Any], error: BaseException, where: str = "") -> LcpError:
    """The one-line refusal of ``model`` failing on ``example_inputs``: the first line of the root cause of
    ``error`` (past wrappers such as torch.fx's ShapeProp error) and the innermost submodule it failed in
    (``where`` when the traceback names none)."""
    error = root_cause(error)
    names = {id(m): name for name, m in model.named_modules() if name}
    for frame, _ in traceback.walk_tb(error.__traceback__):
        where = names.get(id(frame.f_locals.get("self")), where)
    lines = str(error).strip().splitlines()
    why = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    place = f" (in {where})" if where else ""
    inputs = ", ".join(_described(x) for x in example_inputs)
    return LcpError(f"the model does not run on the example input {inputs}{place}: {why}")


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of ``error``'s ``raise ... from`` chain (``__cause__``: how torch.fx and the
    exporters wrap the real reason). ``__context__`` is not followed: an error raised while another was being
    handled is not caused by it."""
    seen = {id(error)}
    while True:
        inner = error.__cause__
        if inner is None or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner


def _described(x: Any) -> str:
    """An example input in a few words: its shape, and its dtype unless float32."""
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(_described(v) for v in x) + "]"
    if not isinstance(x, torch.Tensor):
        return type(x).__name__
    dtype = "" if x.dtype == torch.float32 else f" {str(x.dtype).removeprefix('torch.')}"
    return f"of shape {tuple(x.shape)}{dtype}"


def no_match(flag: str, pattern: str, names: Sequence[str], model: str) -> str:
    """The refusal of a module-name glob (``flag`` ``pattern``) that matches none of the conv/linear ``names``."""
    some = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{flag} {pattern!r} matches no conv or linear module of {model} (its modules are named like {some})"


def build_graph(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    ignore: Sequence[str] = (),
    rules: RuleTable | dict[type, Any] | None = None,
    *,
    strict: bool = True,
    prefix: str = "",
) -> ChannelGraph:
    """Trace ``model`` on ``example_inputs`` (in eval mode; every submodule's mode is kept) and derive its channel
    units and groups.

    ``ignore``: glob patterns of module names (``"head.*"``, ``"*.se.*"``) whose output channels are kept; with
    ``strict`` a pattern that matches no conv or linear module is refused (``LcpError``). ``prefix``: what the
    globs see before each name (``"backbone."`` when ``model`` is that part of a larger model, ``lcp.cut.parts``).
    ``rules``: extra rules for this call only (a ``RuleTable`` or ``{module type: rule}``), taking precedence
    over the registered ones (``lcp.register_module_rule``).
    """
    table = RULES.extended(rules)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    check_batch(example_inputs)
    with modes_kept(model):
        model.eval()
        gm = trace(model, table)
        with torch.no_grad():
            shapes = _ShapeProp(gm)
            try:  # ShapeProp prints the traceback of a failing node itself: keep stderr to lcp's one line
                with contextlib.redirect_stderr(io.StringIO()):
                    shapes.propagate(*example_inputs)
            except Exception as e:
                raise run_failure(model, example_inputs, e, shapes.where) from None
        prop = Propagator(gm, table, batch=input_batch(example_inputs))
        prop.run()
        layers = [rec for rec in prop.records if rec.kind.has_filters]
        for pattern in ignore if strict else ():
            if not any(fnmatch.fnmatchcase(prefix + rec.name, pattern) for rec in layers):
                names = [prefix + rec.name for rec in layers]
                raise NoMatch(no_match("--ignore", pattern, names, type(model).__name__))
        for rec in layers:
            if any(fnmatch.fnmatchcase(prefix + rec.name, p) for p in ignore):
                prop.uf.freeze(rec.out_ids, f"ignored ({rec.name})")
                prop.frozen_ops.append(Frozen(where=rec.name, op=rec.name, reason="matched an --ignore pattern"))
    return ChannelGraph(model, example_inputs, gm, prop.records, prop.uf, prop.frozen_ops, table)

"""``lcp check``: can this model be pruned safely, and what holds it back?

``check(model, example_inputs)`` traces the model, plans a ``budget`` cut (global ranking), builds the pruned
network and verifies it: masked equivalence in float64 and the MACs/params re-count (as every prune does), then
one forward and backward pass in train mode on a copy (batch 2), with the output shape of the original.
The report says how much of the model is prunable, which ops froze channels (the op, the reason and the
module where it happens), and which ``--ignore`` patterns to pass when something goes wrong.

Statuses: ``ok`` (prunes and verifies), ``refused`` (lcp declines with a reason: the model does not trace or
run on the input, nothing is prunable, the budget is out of reach, or the built network failed verification
and was not returned), ``error`` (an unexpected exception: an lcp bug, reported with where it happened).
"""

from __future__ import annotations

import copy
import time
import traceback
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from lcp.cut.parts import prune_parts
from lcp.cut.pruner import prune_graph
from lcp.engine.depth import depth_units
from lcp.engine.graph import ChannelGraph, NoMatch, UntraceableModel, build_graph, sample_shape
from lcp.engine.modes import modes_kept
from lcp.errors import LcpError, UnreachableBudget

_LCP_DIR = Path(__file__).resolve().parents[1]  # the lcp package: an error's innermost frame in it is named


@dataclass
class FrozenOp:
    """One op that froze channels: what it is, why, and the module it runs in."""

    reason: str
    op: str
    module: str


@dataclass
class CheckReport:
    """Outcome of tracing, planning a cut, building and verifying one model."""

    model: str
    status: str  # "ok" (prunes and verifies), "refused" (lcp declines, with reason), "error" (unexpected)
    reason: str = ""
    budget: float = 0.5
    input_size: tuple[int, ...] = ()
    macs_ratio: float | None = None
    params_ratio: float | None = None
    units: int = 0
    prunable: int = 0
    groups: int = 0
    frozen: list[FrozenOp] = field(default_factory=list)
    max_rel_error: float | None = None
    lowest_ratio: float | None = None  # set when the budget is out of reach
    suggestion: list[str] = field(default_factory=list)  # --ignore patterns that made a failing model prune
    depth_units: int = 0  # residual branches --depth may remove (lcp.engine.depth)
    depth_error: str = ""  # why they could not be found (an lcp bug; the width check is unaffected)
    parts: list[str] = field(default_factory=list)  # a model that does not trace whole: the parts pruned
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def frozen_summary(self, limit: int = 6) -> list[str]:
        """Frozen ops grouped by reason and op: count, reason and the first modules where they happen."""
        by: dict[tuple[str, str], list[str]] = defaultdict(list)
        for f in self.frozen:
            by[(f.reason, _op_kind(f.op))].append(f.module)
        rows = sorted(by.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        out = []
        for (reason, op), where in rows[:limit]:
            shown = ", ".join(dict.fromkeys(where))
            shown = _clip(shown, 90)
            out.append(f"{len(where)} x {op}: {reason} (at {shown})")
        if len(rows) > limit:
            out.append(f"... and {sum(len(w) for _, w in rows[limit:])} more ops of {len(rows) - limit} other kinds")
        return out

    def lines(self) -> list[str]:
        size = "x".join(str(s) for s in self.input_size)
        head = f"{self.model}: {self.status.upper()}"
        if self.ok:
            head += (
                f", pruned to {self.macs_ratio:.1%} of its MACs (budget {self.budget:g}, params "
                f"{self.params_ratio:.1%}) at input {size}"
            )
        else:
            head += f" ({self.reason})"
        out = [head]
        if self.parts:
            out.append(
                f"  does not trace whole; pruned by its traceable parts (MACs counted there): {', '.join(self.parts)}"
            )
            out.append(
                f"  verified: each part's masked equivalence (max relative error {self.max_rel_error:.1e}) and "
                "MACs/params re-count, the whole pruned model run in eval mode"
            )
        elif self.ok:
            out.append(
                f"  verified: masked equivalence (max relative error {self.max_rel_error:.1e}), MACs and "
                "params re-counted, forward and backward in train mode"
            )
        if self.units:
            out.append(
                f"  prunable: {self.prunable} of {self.units} channel units ({self.prunable / self.units:.0%}) "
                f"in {self.groups} groups; the other {self.units - self.prunable} are the model's input or "
                f"output channels{' or frozen by the ops below' if self.frozen else ''}"
            )
        if self.depth_error:
            out.append(f"  depth: not analysed ({self.depth_error}); please report it")
        elif self.depth_units:
            n = self.depth_units
            out.append(f"  depth: {n} residual branch{'es' * (n != 1)} can also be removed whole (--depth)")
        if self.frozen:
            n = len(self.frozen)
            out.append(f"  frozen by {n} op{'s' * (n != 1)} (their channels are kept whole):")
            out += [f"    {s}" for s in self.frozen_summary()]
        if self.status == "error":
            out.append("  this is an lcp bug: please report it with this output")
        if self.suggestion:
            flags = " ".join(f"--ignore '{p}'" for p in self.suggestion)
            out.append(f"  to prune it anyway, keep these layers whole: {flags}")
        elif self.status == "error":
            out.append("  --ignore 'MODULE_GLOB' (repeatable) keeps the layers around the failing op whole")
        elif self.ok and self.frozen:
            out.append("  --ignore 'GLOB' (module names, repeatable) keeps more layers whole, e.g. sensitive ones")
        out.append(f"  {self.seconds:.1f} s")
        return out

    def row(self) -> dict[str, Any]:
        """One CSV row (the support matrix)."""
        return {
            "model": self.model,
            "status": self.status,
            "reason": self.reason,
            "macs_ratio": "" if self.macs_ratio is None else round(self.macs_ratio, 4),
            "seconds": round(self.seconds, 2),
            "input": "x".join(str(s) for s in self.input_size),
            "units": self.units,
            "prunable": self.prunable,
            "frozen_ops": len(self.frozen),
            "suggestion": " ".join(self.suggestion),
            "parts": " ".join(p.split(" (")[0] for p in self.parts),
        }


def _op_kind(op: str) -> str:
    return op.split(" (")[0]


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3].rsplit(",", 1)[0] + ", ..."


def frozen_ops(graph: ChannelGraph) -> list[FrozenOp]:
    """``graph.frozen_ops`` with the module each op runs in (from the fx node's module stack)."""
    where: dict[str, str] = {}
    for node in graph.gm.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        if node.op == "call_module":
            where[node.name] = str(node.target)
        elif stack:
            where[node.name] = str(list(stack.values())[-1][0])
    return [
        FrozenOp(reason=f.reason, op=f.op, module=where.get(f.where, f.where) or "(top level)")
        for f in graph.frozen_ops
    ]


def check(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    budget: float = 0.5,
    ignore: Sequence[str] = (),
    name: str | None = None,
    suggest: bool = False,
    suggest_seconds: float = 120.0,
) -> CheckReport:
    """Trace, plan a ``budget`` cut, build, verify (forward, backward, masked equivalence) and report.

    Never raises for a model problem: the report's ``status`` is ``ok``, ``refused`` or ``error``; an ``ignore``
    glob that matches no conv or linear module is bad input and raises ``NoMatch`` (an LcpError). With
    ``suggest``, a model that fails after it traced is retried with layers kept whole (``--ignore``), coarse to
    fine, for at most ``suggest_seconds``; the patterns that made it prune land in ``report.suggestion``.
    """
    t0 = time.perf_counter()
    name = name or getattr(model, "lcp_name", type(model).__name__)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    rep = CheckReport(model=name, status="ok", budget=budget, input_size=sample_shape(example_inputs))
    graph = None
    try:
        graph = build_graph(model, example_inputs, ignore=ignore)
        rep.units, rep.prunable, rep.groups = len(graph.units), len(graph.prunable_units), len(graph.groups)
        rep.frozen = frozen_ops(graph)
        try:
            rep.depth_units = len(depth_units(graph))
        except Exception as e:  # reported, not fatal: depth is an option on top of the width cut
            rep.depth_error = describe_exception(e)
        _try_prune(graph, model, example_inputs, budget, rep)
    except NoMatch:
        raise
    except UntraceableModel as e:
        try:
            _check_parts(model, example_inputs, budget, ignore, rep, e)
        except NoMatch:
            raise
        except UnreachableBudget as e2:
            rep.status, rep.reason, rep.lowest_ratio = "refused", str(e2), e2.lowest
        except LcpError as e2:
            rep.status, rep.reason = "refused", str(e2)
        except Exception as e2:
            rep.status, rep.reason = "error", describe_exception(e2)
    except UnreachableBudget as e:
        rep.status, rep.reason, rep.lowest_ratio = "refused", str(e), e.lowest
    except LcpError as e:
        rep.status, rep.reason = "refused", str(e)
    except Exception as e:  # an engine bug: reported with where it happened, never hidden
        rep.status, rep.reason = "error", describe_exception(e)
    if suggest and graph is not None and graph.prunable_units and not rep.ok and rep.lowest_ratio is None:
        rep.suggestion = suggest_ignore(model, example_inputs, graph, budget, ignore, t0 + suggest_seconds)
    rep.seconds = time.perf_counter() - t0
    return rep


def _check_parts(
    model: nn.Module, example_inputs: tuple, budget: float, ignore: Sequence[str], rep: CheckReport, why: Exception
) -> None:
    """A model that does not trace whole: prune its traceable parts (``lcp.cut.parts``) and run the result;
    an ``ignore`` glob must match in some part, as in a model that traces whole."""
    res = prune_parts(
        model, example_inputs, lambda g, n: prune_graph(g, budget=budget), ignore=ignore, untraced=str(why)
    )
    with torch.no_grad():
        res.model.eval()(*example_inputs)
    rep.parts = [f"{n} ({r.plan.macs_ratio:.1%} of its MACs)" for n, r in res.parts.items()]
    rep.macs_ratio, rep.params_ratio = res.macs_ratio, res.params_ratio
    rep.max_rel_error = max(r.verification.max_rel_error for r in res.parts.values())
    graphs = [r.graph for r in res.parts.values()]
    rep.units = sum(len(g.units) for g in graphs)
    rep.prunable = sum(len(g.prunable_units) for g in graphs)
    rep.groups = sum(len(g.groups) for g in graphs)
    rep.frozen = [f for g in graphs for f in frozen_ops(g)]


def _try_prune(
    graph: ChannelGraph, model: nn.Module, example_inputs: tuple, budget: float, rep: CheckReport | None = None
) -> None:
    """Plan, build and verify (raises on failure); fills ``rep``'s ratios when given."""
    result = prune_graph(graph, budget=budget)  # masked equivalence and MACs/params re-count, or LcpError
    train_step(result.model, model, example_inputs)
    if rep is not None:
        rep.macs_ratio = result.plan.macs_ratio
        rep.params_ratio = result.plan.params_ratio
        rep.max_rel_error = result.verification.max_rel_error


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)) and out:
        return _first_tensor(out[0])
    raise LcpError(f"the model returns {type(out).__name__}, not a tensor")


def train_step(pruned: nn.Module, original: nn.Module, example_inputs: tuple) -> None:
    """Forward and backward of a copy of ``pruned`` in train mode on a batch of 2; output shape as the original's."""
    with modes_kept(original), torch.no_grad():
        ref = _first_tensor(original.eval()(*example_inputs))
    net = copy.deepcopy(pruned).train().requires_grad_(True)  # frozen weights too: the check is of the network
    gen = torch.Generator().manual_seed(0)
    xs = tree_map_only(
        torch.Tensor,
        lambda x: (
            torch.randn((2, *x.shape[1:]), generator=gen, dtype=x.dtype).to(x.device)
            if x.is_floating_point()
            else torch.cat([x, x])
        ),
        tuple(example_inputs),
    )
    with torch.enable_grad():  # a caller under torch.no_grad() still gets its check
        out = _first_tensor(net(*xs))
    if tuple(out.shape[1:]) != tuple(ref.shape[1:]):
        raise LcpError(
            f"the pruned model's output shape {tuple(out.shape[1:])} differs from the original's {tuple(ref.shape[1:])}"
        )
    with torch.enable_grad():
        out.float().square().mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    if not any(g is not None for g in grads):
        raise LcpError("no gradient reaches the pruned model's parameters")
    if not all(g is None or torch.isfinite(g).all() for g in grads):
        raise LcpError("the pruned model's gradients are not finite in train mode")


def describe_exception(e: BaseException) -> str:
    """``Type: first line (lcp/file.py:line in function)``: the innermost lcp frame of the traceback."""
    text = str(e).strip().splitlines()
    where = ""
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        if Path(frame.filename).is_relative_to(_LCP_DIR):
            where = f" (lcp/{Path(frame.filename).relative_to(_LCP_DIR).as_posix()}:{frame.lineno} in {frame.name})"
            break
    return f"{type(e).__name__}: {text[0] if text else ''}{where}"


# ---------------------------------------------------------------------------------------------- suggestions


def _prefixes(names: Sequence[str], parent: str) -> list[str]:
    """Direct children of ``parent`` (a module path, '' for the root) among the module ``names``."""
    out: dict[str, None] = {}
    cut = len(parent) + 1 if parent else 0
    for n in names:
        if parent and not (n == parent or n.startswith(parent + ".")):
            continue
        rest = n[cut:]
        if rest:
            out[(parent + "." if parent else "") + rest.split(".")[0]] = None
    return list(out)


def _patterns(prefixes: Sequence[str], layers: Sequence[str]) -> list[str]:
    """The --ignore globs that keep each prefix whole: the layer itself and/or the layers under it, only those
    that match one of ``layers`` (lcp prune refuses a glob that matches nothing)."""
    out = []
    for prefix in prefixes:
        if prefix in layers:
            out.append(prefix)
        if any(n.startswith(prefix + ".") for n in layers):
            out.append(prefix + ".*")
    return out


def suggest_ignore(
    model: nn.Module, example_inputs: tuple, graph: ChannelGraph, budget: float, ignore: Sequence[str], deadline: float
) -> list[str]:
    """Module prefixes to keep whole so that the model prunes: greedy, top-level blocks first, then deeper.

    Returns ``[]`` when nothing was found in time (or when keeping every layer whole does not help).
    """
    layers = [r.name for r in graph.records if r.kind.has_filters]

    def prunes(prefixes: Sequence[str]) -> bool:
        """Whether the model verifies with ``prefixes`` kept whole (at the budget, or the lowest reachable)."""
        if time.perf_counter() > deadline:
            raise TimeoutError
        try:
            g = build_graph(model, example_inputs, ignore=[*ignore, *_patterns(prefixes, layers)])
            if not g.prunable_units:
                return True  # nothing left to break
            try:
                _try_prune(g, model, example_inputs, budget)
            except UnreachableBudget as e:
                _try_prune(g, model, example_inputs, min(1.0, e.lowest + 0.01))
            return True
        except Exception:
            return False

    top = _prefixes(layers, "")
    while len(top) == 1 and len(_prefixes(layers, top[0])) > 1:  # e.g. everything under `features`
        top = _prefixes(layers, top[0])
    keep = list(top)
    if len(top) < 2 or not prunes(top):
        return []
    try:
        while True:
            for p in list(keep):  # drop the blocks that need not be kept whole
                trial = [q for q in keep if q != p]
                if trial and prunes(trial):
                    keep = trial
            finer = []  # then look one level deeper into the blocks still needed
            for p in keep:
                children = [c for c in _prefixes(layers, p) if c != p]
                finer += children if len(children) > 1 else [p]
            if finer == keep:
                break
            keep = finer
    except TimeoutError:
        pass
    return [] if sorted(keep) == sorted(top) else _patterns(keep, layers)

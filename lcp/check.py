"""``lcp check``: can this model be pruned safely, and what holds it back?"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from .errors import LcpError, UnreachableBudget
from .graph import build_graph


@dataclass
class CheckReport:
    """Outcome of tracing, planning a cut, building and verifying one model."""

    model: str
    status: str  # "ok" (prunes and verifies), "refused" (lcp declines, with reason), "error" (unexpected)
    reason: str = ""
    macs_ratio: float | None = None
    units: int = 0
    prunable: int = 0
    frozen: list[str] = field(default_factory=list)
    max_rel_error: float | None = None
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"{self.model}: {self.status.upper()}" + (f" ({self.reason})" if self.reason else "")]
        if self.units:
            out.append(f"  channel units: {self.units} ({self.prunable} prunable, "
                       f"{self.units - self.prunable} frozen or model input/output)")
        if self.macs_ratio is not None:
            out.append(f"  pruned to {self.macs_ratio:.1%} of MACs; forward, backward and masked-equivalence "
                       f"verified (max relative error {self.max_rel_error:.1e})")
        for f in self.frozen[:10]:
            out.append(f"  frozen: {f}")
        if len(self.frozen) > 10:
            out.append(f"  ... and {len(self.frozen) - 10} more frozen ops")
        if self.frozen:
            out.append("  to keep more layers whole, pass --ignore 'PATTERN' (module-name globs)")
        out.append(f"  {self.seconds:.1f} s")
        return out


def check(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], *, budget: float = 0.5,
          ignore: Sequence[str] = (), name: str | None = None) -> CheckReport:
    """Trace, plan a ``budget`` cut, build, verify (forward, backward, masked equivalence) and report."""
    from .pruner import prune_graph

    t0 = time.perf_counter()
    name = name or getattr(model, "lcp_name", type(model).__name__)
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    rep = CheckReport(model=name, status="ok")
    try:
        graph = build_graph(model, example_inputs, ignore=ignore)
        rep.units, rep.prunable = len(graph.units), len(graph.prunable_units)
        rep.frozen = [f"{f.reason}: {f.op} at {f.where}" for f in graph.frozen_ops]
        result = prune_graph(graph, budget=budget)
        pruned = result.model.train()
        out = pruned(*[torch.randn_like(x) for x in example_inputs])
        ref = model.eval()(*example_inputs)
        if out.shape != ref.shape:
            raise LcpError(f"output shape changed from {tuple(ref.shape)} to {tuple(out.shape)}")
        out.float().sum().backward()
        rep.macs_ratio = result.plan.macs_ratio
        rep.max_rel_error = result.verification.max_rel_error
    except UnreachableBudget as e:
        rep.status, rep.reason = "refused", str(e)
    except LcpError as e:
        rep.status, rep.reason = "refused", str(e)
    except Exception as e:  # an engine bug: reported, never hidden
        rep.status, rep.reason = "error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    rep.seconds = time.perf_counter() - t0
    return rep

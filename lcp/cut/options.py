"""Options of the cut: the budget, how units are scored and how the walk keeps widths (declared once)."""

from __future__ import annotations

from dataclasses import dataclass

from lcp.cut.importance import AGGREGATIONS, importance_names
from lcp.errors import LcpError
from lcp.options import at_least, each, fraction, option, or_auto, unit_interval

BUDGET_TYPES = ("macs", "params", "latency")


def check_budget(budget: float, budget_type: str = "macs") -> None:
    """The one budget validation: a known budget type and a fraction in (0, 1] (one-line ``LcpError``)."""
    if budget_type not in BUDGET_TYPES:
        raise LcpError(f"unknown budget type '{budget_type}'; choose one of {', '.join(BUDGET_TYPES)}")
    try:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise ValueError(f"must be a Python int or float in (0, 1], got {budget!r} of type {type(budget).__name__}")
        unit_interval(budget)
    except ValueError as e:
        raise LcpError(f"budget {e}") from None


def caps_from(specs: list[str] | dict[str, float] | None) -> dict[str, float]:
    """``["layer1.*=0.3", ...]`` (or a ``{glob: fraction}`` dict) as ``{glob: fraction}``; ValueError when an
    entry is not GLOB=FRACTION with a fraction in [0, 1]."""
    if not specs:
        return {}
    if isinstance(specs, dict):
        pairs = list(specs.items())
    else:
        pairs = []
        for spec in specs:
            glob, sep, value = str(spec).rpartition("=")
            if not sep or not glob:
                raise ValueError(f"must be GLOB=FRACTION (e.g. 'layer1.*=0.3'), got {spec!r}")
            try:
                pairs.append((glob, float(value)))
            except ValueError:
                raise ValueError(f"must be GLOB=FRACTION with a number after '=', got {spec!r}") from None
    for glob, share in pairs:
        if not (isinstance(share, (int, float)) and 0 <= share <= 1):
            raise ValueError(f"needs a fraction in [0, 1] for {glob!r}, got {share}")
    return {glob: float(share) for glob, share in pairs}


@dataclass
class CutOptions:
    """How much to keep and how the units are ranked and cut."""

    budget: float = option(0.5, "fraction of the baseline cost to keep, in (0, 1]; 0.5 keeps 50%", check=unit_interval)
    budgets: list[float] | None = option(
        None,
        "several budgets, e.g. 0.7,0.5,0.3: one output folder per budget (lcp: one search for all of them; "
        "lfgcl, amc: one search per budget unless --search-budget)",
        check=each(unit_interval),
    )
    budget_type: str = option(
        "macs", "what the budget counts: macs, params, or latency measured on --device", choices=BUDGET_TYPES
    )
    importance: str = option("l2", "filter importance", choices=importance_names)
    aggregate: str = option("mean", "how a coupled unit's filter scores combine (LeGR used sum)", choices=AGGREGATIONS)
    round_to: int | str = option(
        16,
        "keep widths in multiples of this many channel units (halved for a group narrower than four times it); auto: "
        "the multiple that runs without a slowdown on --device at --latency-batch, measured on the model's "
        "costliest conv",
        check=or_auto(at_least(1)),
    )
    min_ratio: float = option(0.1, "per-group floor: keep at least this fraction (and 2 channels)", check=fraction)
    ignore: list[str] | None = option(
        None,
        "module-name glob (e.g. 'layer1.*') whose output channels are kept whole",
        metavar="GLOB",
        repeat=True,
        signature=False,
    )
    max_removal: list[str] | None = option(
        None,
        "GLOB=FRACTION: remove at most this fraction of the channels written by the modules matching GLOB "
        "(e.g. 'layer1.*=0.3')",
        check=lambda specs: caps_from(specs),
        metavar="GLOB=FRACTION",
        repeat=True,
        signature=False,
    )
    depth: bool = option(
        False,
        "let the walk also remove whole residual branches (a block goes when its inner channel group is emptied, "
        "in the same global ranking)",
        signature=False,  # in a run's signature only when on (lcp.run.config), so older runs still resume
    )
    time_aware: bool = option(
        False,
        "latency budgets: rank channels by importance per millisecond they save (the per-layer latency table, "
        "a branch's whole time with --depth), not by importance alone",
        signature=False,  # in a run's signature only when on, like depth
    )
    latency_batch: int = option(1, "batch size of latency measurements", check=at_least(1), signature=False)

    def all_budgets(self) -> list[float]:
        return list(self.budgets) if self.budgets else [self.budget]

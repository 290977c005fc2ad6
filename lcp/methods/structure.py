"""``lcp prune --structure-from DIR``: apply the pruned structure of an earlier run to the same architecture.

DIR is the output folder of an ``lcp prune`` run; its ``channels.json`` names the removed channel units (or,
for methods ads and lwp, the removed connections). The model of the new run (its own weights, data and number
of classes) is traced as usual and must have the same channel graph: the same model name, every removed unit
(connection) known and prunable, and after the cut the widths recorded in DIR, except the classifier's output
(the number of classes is not part of the structure). No search: the pipeline cuts, verifies, recalibrates,
fine-tunes and writes the outputs as for every method, with method ``structure-from``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lcp.cut.pruner import PruneResult, cut_removed
from lcp.engine.connections import ConnectionGraph
from lcp.engine.cost import CostModel
from lcp.engine.graph import ChannelGraph
from lcp.engine.surgery import apply_plan
from lcp.errors import LcpError
from lcp.io import read_json
from lcp.methods.base import Context, Learned, Method, register_method
from lcp.methods.connections.method import cut_connections
from lcp.methods.legr.method import SearchOptions
from lcp.methods.options import AgentOptions
from lcp.models import store
from lcp.models.factory import model_info
from lcp.options import field_names

STRUCTURE_METHOD = "structure-from"
#: options that choose a structure; refused with --structure-from (the structure is given)
SEARCH_OPTIONS = (
    "method",
    "transforms",
    "importance",
    "aggregate",
    "round_to",
    "min_ratio",
    "ignore",
    "max_removal",
    "depth",
    *(n for n in field_names(SearchOptions, AgentOptions) if n != "transforms"),
)


@dataclass
class Structure:
    """The pruned structure of an earlier run; ``fit`` sets what to remove from the new run's graph."""

    path: Path  # the run folder (absolute)
    spec: dict  # its channels.json
    removed: np.ndarray | None = None  # channel units to remove (bool per unit), after ``fit``
    keep: np.ndarray | None = None  # connections to keep (bool per connection), after ``fit``

    @property
    def model(self) -> str:
        return self.spec["model"]

    @property
    def connections(self) -> bool:
        return "removed_connections" in self.spec

    @property
    def method(self) -> str:
        """The method that found the structure (through earlier transfers)."""
        return str(self.spec.get("structure_method") or self.spec.get("method") or "unknown")

    def columns(self) -> dict[str, str]:
        """Report columns and channels.json keys that say where the structure came from."""
        return {"structure_from": str(self.path), "structure_method": self.method}

    @property
    def _misfit(self) -> str:
        return f"the structure in {self.path} does not fit {self.model}"

    def _fits_not(self, what: str) -> LcpError:
        return LcpError(f"{self._misfit}: {what}")

    def fit(self, graph: ChannelGraph, budget: float | None, budget_type: str, log: Callable[[str], None]) -> None:
        """Find the structure's units (connections) in ``graph`` and check the cut has the recorded widths;
        log the cost it keeps, and say so when ``budget`` (given, optional) is not what it reaches."""
        if self.connections:
            cg = ConnectionGraph(graph)
            try:
                self.keep = cg.from_names(self.spec["removed_connections"])
                cg.check(self.keep)
            except LcpError as e:
                raise self._fits_not(str(e)) from None
            pruned = cg.apply(self.keep)
            (macs, params), base = cg.evaluate(self.keep), (cg.macs_base, cg.params_base)
            what = f"{int((~self.keep).sum())} of {cg.n} connections removed"
        else:
            self.removed = store.removed_mask(graph, self.spec["removed_units"], self._misfit)
            pruned = apply_plan(graph, self.removed)
            cost = CostModel(graph)
            (macs, params), base = cost.evaluate(self.removed), (cost.macs_base, cost.params_base)
            what = f"{int(self.removed.sum())} of {len(graph.prunable_units)} channel units removed"
        self._check_widths(store.widths(pruned), store.output_classes(graph.model, graph.example_inputs))
        ratios = {"macs": macs / base[0], "params": params / base[1]}
        log(
            f"structure from {self.path} (method {self.method} on {self.spec.get('dataset', 'unknown data')}): "
            f"{what}, {ratios['macs']:.4f} of the MACs, {ratios['params']:.4f} of the params; no search"
        )
        if budget is not None and budget_type == "latency":
            log(
                f"--budget {budget:g} of latency is not applied: the structure fixes the cost (report.csv has the "
                "measured speedup)"
            )
        elif budget is not None and abs(ratios[budget_type] - budget) > 0.01:
            log(
                f"--budget {budget:g} is not what the structure keeps ({ratios[budget_type]:.4f} of the "
                f"{budget_type}): the structure fixes the cost, --budget is ignored"
            )

    def _check_widths(self, actual: dict[str, list[int]], classes: int) -> None:
        """The widths recorded in DIR, except the classifier's output when the number of classes differs."""
        recorded, old = self.spec.get("widths"), self.spec.get("num_classes")  # absent in a hand-written file
        if not isinstance(recorded, dict):
            return  # written without widths (older lcp): the unit keys were checked
        differ = [n for n in recorded if n not in actual]
        for name, b in actual.items():  # in model order
            a = list(recorded.get(name, []))
            if a != b and not (old != classes and a[:1] == [old] and b[:1] == [classes] and a[1:] == b[1:]):
                differ.append(name)
        if differ:
            first = differ[0]
            raise self._fits_not(
                f"the widths of {len(differ)} modules differ ({first}: "
                f"{recorded.get(first, 'absent')} in DIR, {actual.get(first, 'absent')} here)"
            )

    def config(self, cfg: Any) -> Any:
        """The run's config as the pipeline uses it: method ``structure-from``, the structure's budget."""
        budget, budget_type = self.spec.get("budget"), self.spec.get("budget_type")
        if not (isinstance(budget, (int, float)) and 0 < budget <= 1 and budget_type in ("macs", "params", "latency")):
            budget, budget_type = 1.0, "macs"  # saved without a budget (lcp.save of a hand-made result)
        return dataclasses.replace(
            cfg, method=STRUCTURE_METHOD, importance="", budget=float(budget), budget_type=budget_type, budgets=None
        )


def check_options(cfg: Any, given: Iterable[str] = ()) -> None:
    """Refuse options that choose a structure: those in ``given`` (set explicitly: flags, recipe) or, without it,
    those that differ from the defaults."""
    default, given = type(cfg)(), set(given)  # the config class's defaults
    bad = [k for k in SEARCH_OPTIONS if k in given or getattr(cfg, k) != getattr(default, k)]
    if cfg.budgets and len(cfg.budgets) > 1:
        bad.append("budgets")
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in bad)
        raise LcpError(f"--structure-from applies the structure of {cfg.structure_from} without a search: drop {flags}")


def open_structure(cfg: Any, given: Iterable[str] = ()) -> Structure:
    """Read ``cfg.structure_from`` and check what can be checked before the model is loaded (options, model name,
    output folder)."""
    check_options(cfg, given)
    path = Path(cfg.structure_from).expanduser()
    if not (path / "channels.json").is_file():
        hint = (
            "; pass one of its budget_* folders"
            if any(path.glob("budget_*/channels.json"))
            else "; pass the --out folder of an lcp prune run"
        )
        raise LcpError(f"--structure-from {path} holds no pruned structure (channels.json missing){hint}")
    spec = read_json(path / "channels.json", what="channels.json")
    ok = (
        isinstance(spec, dict)
        and isinstance(spec.get("model"), str)
        and isinstance(spec.get("num_classes", 0), (int, type(None)))
    )
    units, conns = (spec.get("removed_units"), spec.get("removed_connections")) if ok else (None, None)
    if (
        not ok
        or not (isinstance(units, list) and all(isinstance(k, str) for k in units))
        or not isinstance(conns, (list, type(None)))
    ):
        raise LcpError(f"channels.json in {path} is damaged: it needs model, num_classes and removed_units")
    structure = Structure(path.resolve(), spec)
    name = model_info(cfg.model).name
    if name != structure.model:
        raise LcpError(
            f"the structure in {path} is of {structure.model}, not {name}: --structure-from needs the "
            "same architecture (pass --model " + structure.model + ")"
        )
    if Path(cfg.out).expanduser().resolve() == structure.path:
        raise LcpError(f"--out {cfg.out} is the --structure-from folder: write the new run to another folder")
    return structure


@register_method
class StructureMethod(Method):
    """``--structure-from DIR``: the units (connections) an earlier run removed, found again in this model."""

    name = STRUCTURE_METHOD
    summary = "the structure of an earlier run (--structure-from DIR), no search"
    listed = False

    def check(self, options: Any, budgets: list[float | None]) -> None:
        pass  # the structure fixes the cost; open_structure checks the options

    def learn(self, ctx: Context) -> Learned:
        o = ctx.options
        structure = open_structure(o)
        structure.fit(ctx.graph, o.budget, o.budget_type, ctx.log)
        ctx.cache["structure"] = structure
        return Learned(keep=structure.keep, removed=structure.removed, columns=structure.columns())

    def run_options(self, ctx: Context, learned: Learned) -> Any:
        """Method ``structure-from`` at the structure's own budget (the structure fixes the cost)."""
        return ctx.cache["structure"].config(ctx.options)

    def cut(self, ctx: Context, learned: Learned, budget: float) -> PruneResult:
        if learned.keep is not None:
            return cut_connections(ctx, learned.keep, budget, self.name)
        result = cut_removed(
            ctx.graph, learned.removed, budget=budget, budget_type=ctx.options.budget_type, method=self.name
        )
        ctx.log(
            f"pruned {ctx.name} with the structure from {ctx.cache['structure'].path}: "
            f"{result.plan.describe()}; verified {result.verification}"
        )
        return result

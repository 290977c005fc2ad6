"""The method interface and its registry.

A method decides *what* to remove: ``learn`` once (a search, an agent, nothing at all), then ``cut`` to each
budget. Everything after the cut (BatchNorm recalibration, evaluation, fine-tuning, distillation, the report and
the output folder) is the run's post-cut stage, the same for every method (``lcp.run.recover``).

Adding a method is one module::

    from lcp.methods import Method, register_method

    @register_method
    class Mine(Method):
        name = "mine"
        summary = "what it does, one line"

        def learn(self, ctx):   # optional: runs once for all budgets
            return Learned(transforms=...)  # or ratios=..., or nothing

        def cut(self, ctx, learned, budget):  # optional: the default cuts with ctx's importance and the order
            ...

``lcp prune --method mine`` and ``lcp.prune(model, method="mine")`` then find it (import the module first). A
method that reads another method's options (``ctx.options.tau``, ...) names them in ``reads``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lcp.cut import importance as imp
from lcp.cut.latency_table import LatencyTable
from lcp.cut.options import BUDGET_TYPES
from lcp.cut.pruner import PruneResult, prune_graph
from lcp.cut.transforms import Transforms
from lcp.engine.cost import CostModel
from lcp.engine.graph import ChannelGraph
from lcp.errors import LcpError
from lcp.options import changed
from lcp.training.data import DataBundle

Log = Callable[[str], None]


@dataclass
class Context:
    """What a method works with: the traced model, the run's options, the data and where to write.

    ``options`` holds the fields of every options dataclass the run uses (a ``PruneConfig`` on the command line;
    the API builds one too). ``out`` is the run folder for the method's own outputs (``search.csv``, ...; None:
    write nothing). ``state`` / ``save_state`` keep stage results across ``--resume``."""

    graph: ChannelGraph
    options: Any
    data: DataBundle | None = None
    out: Path | None = None
    log: Log = print
    name: str = ""
    weights: str = ""
    writer: bool = True  # under torchrun only rank 0 writes
    state: dict = field(default_factory=dict)
    save_state: Callable[..., None] = lambda **kw: None
    cache: dict = field(default_factory=dict)  # what a method builds once per run (a connection graph, ...)
    verify: bool = True  # check every pruned network against the masked original
    batches: Any = None  # training batches for data-driven importance (taylor); default: from ``data``
    _cost_scores: tuple | None = None

    def need_data(self, method: str, instead: str = "") -> DataBundle:
        """The data a learning method needs; without it one line says what to pass (``instead``: the
        alternative, e.g. a learned result)."""
        if self.data is None:
            raise LcpError(
                f"method {method!r} needs {instead + ' or ' if instead else ''}data (a data set name, an "
                "ImageFolder path or a DataBundle) to learn from"
            )
        return self.data

    def importance_batches(self) -> Any:
        """The batches a data-driven importance scores on: the caller's, else for ``taylor`` 1,024 seeded
        training images (the same for the search and the cut, so both rank by the same scores)."""
        o = self.options
        if self.batches is None and o.importance == "taylor" and self.data is not None:
            return self.data.loader("train", 64, shuffle=True, seed=o.seed, limit=1024)
        return self.batches

    def cost_and_scores(self) -> tuple[CostModel, np.ndarray]:
        """The cost model the cut walks (latency budgets: the per-layer latency table's prediction) and the unit
        scores it ranks (``options.importance`` aggregated by ``options.aggregate``), computed once."""
        if self._cost_scores is None:
            o = self.options
            table = None
            if o.budget_type == "latency":
                table = LatencyTable.build(
                    self.graph, batch=o.latency_batch, device=o.device, n_threads=o.threads, progress=o.progress
                )
            raw = imp.filter_scores(self.graph, o.importance, self.importance_batches())
            scores = imp.unit_scores(self.graph, raw, o.aggregate)
            self._cost_scores = (CostModel(self.graph, latency=table), scores)
        return self._cost_scores


@dataclass
class Learned:
    """What a method learned once, for every budget it cuts to.

    ``transforms``: per-group (alpha, kappa) of the ranking; ``ratios``: per-group keep ratios
    (``ratios_by_budget``: those learned at each budget); ``keep``: dense connections kept (bool per connection);
    ``removed``: channel units to remove (bool per unit); ``columns``: report columns and channels.json keys that
    describe it; ``seconds``: how long learning took."""

    transforms: Transforms | None = None
    ratios: np.ndarray | None = None
    ratios_by_budget: dict[float, np.ndarray] | None = None
    keep: np.ndarray | None = None
    removed: np.ndarray | None = None
    columns: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class Method:
    """One way to choose what to remove. Subclasses set ``name`` and ``summary`` and override what differs."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: how ``cut`` orders the units by default: ``global`` (one ranking of the plain scores), ``lcp`` (one ranking
    #: of the scores compensated by ``learned.transforms``), ``uniform`` or ``random`` (``lcp.cut.ranking.plan``)
    order: ClassVar[str] = "global"
    budget_types: ClassVar[tuple[str, ...]] = BUDGET_TYPES
    several_budgets: ClassVar[bool] = True  # accepts several ``--budgets`` in one run (one output folder each)
    #: option names that belong to this method's run signature beyond the common ones (``PruneConfig``)
    signature_options: ClassVar[tuple[str, ...]] = ()
    #: offered by ``--method`` (``structure-from`` has its own flag)
    listed: ClassVar[bool] = True
    #: ``learn`` reads the data (held-out images): the search methods; the others need data only to recover
    learns_from_data: ClassVar[bool] = False
    #: the method-specific options (those of a search or an agent) this method reads; another method's option
    #: set away from its default is refused by ``check``, since it would be silently ignored
    reads: ClassVar[frozenset[str]] = frozenset()
    #: its cut can empty a residual branch's group (``--depth``) / rank units by the time they save
    #: (``--time-aware``); where not, those options are refused, since they would be ignored
    removes_blocks: ClassVar[bool] = True
    ranks_by_time: ClassVar[bool] = True

    def check(self, options: Any, budgets: list[float | None]) -> None:
        """Refuse options this method cannot honour (one-line ``LcpError``) before any work."""
        if options.budget_type not in self.budget_types:
            raise LcpError(
                f"method {self.name} takes --budget-type {' or '.join(self.budget_types)}, not {options.budget_type}"
            )
        if not self.several_budgets and len(budgets) > 1:
            raise LcpError(f"method {self.name} searches one budget: pass --budget, not several --budgets")
        _refuse_foreign_options(self, options)
        if getattr(options, "time_aware", False) and options.budget_type != "latency":
            raise LcpError(
                f"--time-aware ranks by the time a channel saves: it needs --budget-type latency, "
                f"not {options.budget_type}"
            )
        for flag, wanted, able in (
            ("--depth", getattr(options, "depth", False), "removes_blocks"),
            ("--time-aware", getattr(options, "time_aware", False), "ranks_by_time"),
        ):
            if wanted and not getattr(self, able):
                users = ", ".join(m.name for m in _REGISTRY.values() if m.listed and getattr(m, able))
                raise LcpError(f"method {self.name} would ignore {flag}: drop it or choose --method {users}")

    def learn(self, ctx: Context) -> Learned:
        """Learn once for all budgets (default: nothing to learn)."""
        return Learned()

    def run_options(self, ctx: Context, learned: Learned) -> Any:
        """The options the cuts and the report use after ``learn`` (default: unchanged)."""
        return ctx.options

    def cut(self, ctx: Context, learned: Learned, budget: float) -> PruneResult:
        """Cut ``ctx.graph`` to ``budget``: the units ranked by ``ctx.options.importance``, ordered by ``order``
        with ``learned.transforms``, or by ``learned.ratios`` per group; verified."""
        o = ctx.options
        result = prune_graph(
            ctx.graph,
            budget=budget,
            budget_type=o.budget_type,
            method=self.order,
            importance=o.importance,
            aggregate=o.aggregate,
            transforms=learned.transforms,
            round_to=o.round_to,
            min_ratio=o.min_ratio,
            seed=o.seed,
            batches=ctx.importance_batches(),
            latency={"batch": o.latency_batch, "device": o.device, "n_threads": o.threads, "time_aware": o.time_aware},
            ratios=learned.ratios,
            label=self.name,
            check=ctx.verify,
        )
        if learned.ratios is not None:
            result.info["agent_ratios"] = learned.ratios
        return result


_REGISTRY: dict[str, Method] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available by its ``name`` to ``lcp prune --method`` and ``lcp.prune``."""
    if not cls.name:
        raise LcpError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls()
    return cls


def unregister_method(name: str) -> None:
    _REGISTRY.pop(name, None)


def get_method(name: str) -> Method:
    """The registered method ``name``; an unknown name is one line naming the choices."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LcpError(f"unknown method {name!r}; choose one of {', '.join(method_names())}") from None


def method_names(listed_only: bool = True) -> list[str]:
    """Names of the registered methods, in registration order (``--method`` choices)."""
    return [n for n, m in _REGISTRY.items() if m.listed or not listed_only]


class ForeignOptionError(LcpError):
    """An option of other methods (``users``) that the chosen method would ignore."""

    def __init__(self, flag: str, users: list[str], method: str) -> None:
        self.flag, self.users = flag, users
        super().__init__(
            f"{flag} is an option of method {', '.join(users)}; method {method} would ignore it: drop it or choose "
            f"--method {users[0]}"
        )


def _refuse_foreign_options(method: Method, options: Any) -> None:
    """One line for an option of other methods (``Method.reads``) that ``method`` would ignore."""
    if not is_dataclass(options):
        return
    for name in changed(options, sorted({n for m in _REGISTRY.values() for n in m.reads} - method.reads)):
        users = [m.name for m in _REGISTRY.values() if name in m.reads]
        raise ForeignOptionError("--" + name.replace("_", "-"), users, method.name)


def describe_methods() -> str:
    """``name: summary; ...`` for help texts and docs."""
    return "; ".join(f"{m.name}: {m.summary}" for m in _REGISTRY.values() if m.listed)


def methods_markdown() -> str:
    """The registered methods as a Markdown table (docs/methods.md is this, generated by ``lcp methods --markdown``)."""
    lines = [
        "| method | what it does | budgets | learns from data | several `--budgets` in one run | run signature adds |",
        "|---|---|---|---|---|---|",
    ]
    for m in _REGISTRY.values():
        flag = "`--structure-from DIR`" if not m.listed else f"`--method {m.name}`"
        extra = ", ".join(f"`{o}`" for o in m.signature_options) or "-"
        lines.append(
            f"| {flag} | {m.summary} | {', '.join(m.budget_types)} | {'yes' if m.learns_from_data else 'no'} "
            f"| {'yes' if m.several_budgets else 'no'} | {extra} |"
        )
    return "\n".join(lines) + "\n"


def timed(fn: Callable[[], Learned]) -> Learned:
    """Run ``fn`` and record its wall time in the returned ``Learned``."""
    t0 = time.perf_counter()
    learned = fn()
    learned.seconds = learned.seconds or time.perf_counter() - t0
    return learned

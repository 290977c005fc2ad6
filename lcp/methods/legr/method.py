"""The method ``lcp``: LeGR's learned layer compensation, then one global ranking cut to every budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lcp.cut.ranking import Transforms
from lcp.errors import LcpError
from lcp.io import atomic_write_json, read_json
from lcp.methods.base import Context, Learned, Method, register_method
from lcp.methods.legr.evolution import COMPENSATIONS, search, write_outputs
from lcp.methods.legr.fitness import fitness_for
from lcp.options import at_least, option, positive, unit_interval

_GROUP = "search (method lcp without --transforms)"
STOPPED_BY = {"time": "the --search-time budget", "convergence": "convergence (--search-patience)"}


@dataclass
class SearchOptions:
    """The meta-learner's settings (LeGR's defaults)."""

    transforms: str | None = option(
        None, "transforms.json with learned (alpha, kappa) per group (method lcp; skips the search)", group=_GROUP
    )
    search_budget: float | None = option(
        None,
        "budget the search prunes to (default: every budget asked for, their mean held-out loss)",
        check=unit_interval,
        group=_GROUP,
    )
    candidates: int = option(400, "candidates evaluated by the search", check=at_least(1), group=_GROUP)
    population: int = option(64, "legr population (LeGR's)", check=at_least(1), group=_GROUP)
    tournament: int = option(16, "legr tournament size", check=at_least(1), group=_GROUP)
    optimizer: str = option(
        "legr", "legr (regularized evolution) or a nevergrad optimizer: ngopt, cma, de, ...", group=_GROUP
    )
    compensation: str = option(
        "affine", "affine: alpha*s+kappa (LeGR); additive: s+kappa (LcP)", choices=COMPENSATIONS, group=_GROUP
    )
    tau: int = option(0, "SGD steps before scoring a candidate", check=at_least(0), group=_GROUP)
    label_free: bool = option(
        False, "fitness from matching the unpruned model's outputs (no labels needed)", group=_GROUP
    )
    workers: int = option(1, "local processes evaluating candidates", check=at_least(1), signature=False, group=_GROUP)
    executor: str | None = option(
        None, "dask://HOST:PORT to evaluate candidates on a Dask cluster", signature=False, group=_GROUP
    )
    search_time: float | None = option(
        None,
        "wall-time budget of the search in seconds (over every run of a resumed search): it stops between "
        "candidates once spent; search.json records how many it evaluated",
        check=positive,
        signature=False,
        group=_GROUP,
    )
    search_patience: int | None = option(
        None,
        "stop the search once the best held-out fitness has not improved for this many candidates (convergence)",
        check=at_least(1),
        signature=False,
        group=_GROUP,
    )
    search_stop: int | None = option(
        None,
        "stop the search after this many candidates, keeping the schedule of --candidates (reproduces a search "
        "that --search-time stopped: see its search.json)",
        check=at_least(1),
        signature=False,
        group=_GROUP,
    )


@register_method
class LegrMethod(Method):
    """Search per-group (alpha, kappa) on held-out data (or read ``--transforms``); cut by the compensated
    global ranking."""

    name = "lcp"
    summary = "learned layer compensation (LeGR search), then one global ranking"
    order = "lcp"
    learns_from_data = True

    def check(self, options: Any, budgets: list[float | None]) -> None:
        super().check(options, budgets)
        if options.device != "cpu" and (options.workers > 1 or options.executor):
            raise LcpError(
                f"the lcp search on --device {options.device} scores candidates in this process: drop --workers "
                "and --executor (they spread the search over CPU processes)"
            )

    def learn(self, ctx: Context) -> Learned:
        o, graph = ctx.options, ctx.graph
        if o.transforms:
            return Learned(transforms=Transforms.from_json(read_json(o.transforms, what="transforms file"), graph))
        ctx.need_data(self.name, "transforms")
        cost, scores = ctx.cost_and_scores()
        budgets = [o.search_budget] if o.search_budget else sorted(set(o.all_budgets()))
        ctx.log(
            f"learning the layer compensation: {o.optimizer} search, {o.candidates} candidates at "
            f"{', '.join(f'{b:g}' for b in budgets)} of {o.budget_type}"
            + (" (mean held-out loss)" if len(budgets) > 1 else "")
        )
        fitness = fitness_for(ctx, budgets, label_free=o.label_free)
        write = ctx.writer and ctx.out is not None
        result = search(
            graph,
            scores,
            fitness,
            optimizer=o.optimizer,
            compensation=o.compensation,
            candidates=o.candidates,
            population=o.population,
            tournament=o.tournament,
            seed=o.seed,
            state_path=ctx.out / "search_state.json" if write else None,
            resume=o.resume,
            progress=o.progress and ctx.writer,
            workers=o.workers,
            executor=o.executor,
            stop_after=o.search_stop,
            time_budget=o.search_time,
            patience=o.search_patience,
        )
        first = result.history[0]["fitness"] if result.history else float("nan")
        ctx.log(
            f"search: {result.evaluated} of {o.candidates} candidates in {result.seconds:.0f} s"
            + (
                f" (stopped by {STOPPED_BY[result.stopped_by]}; --search-stop {result.evaluated} reproduces it)"
                if result.stopped_by in STOPPED_BY
                else ""
            )
            + f"; held-out fitness {first:.4f} (identity) -> {result.best_fitness:.4f}"
        )
        if write:
            write_outputs(result, ctx.out)
            atomic_write_json(ctx.out / "transforms.json", result.transforms.to_json())
        return Learned(transforms=result.transforms)

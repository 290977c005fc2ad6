"""The method ``lcp``: LeGR's learned layer compensation, then one global ranking cut to every budget."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lcp.cut.transforms import Transforms, scores_of
from lcp.errors import LcpError
from lcp.io import atomic_write_json, read_json
from lcp.methods.base import Context, Learned, Method, register_method
from lcp.methods.legr.evolution import COMPENSATIONS, resolve_optimizer, search
from lcp.methods.legr.fitness import fitness_for
from lcp.methods.legr.outputs import write_outputs
from lcp.methods.legr.prior import (
    SENSITIVITY_FITNESS,
    SENSITIVITY_LEVELS,
    measure_sensitivity,
    sensitivity_members,
    structured_members,
)
from lcp.options import at_least, field_names, option, unit_interval
from lcp.training.distributed import distributed

_GROUP = "search (method lcp without --transforms)"
#: the largest share of the search's time budget the sensitivity measurement may take
SENSITIVITY_SHARE = 0.75
STOPPED_BY = {"time": "its time budget (--search-time)", "convergence": "convergence (--search-patience)"}


@dataclass(frozen=True)
class Preset:
    """A named search setting; ``--candidates``, ``--population`` and ``--tournament`` override its numbers."""

    candidates: int
    population: int
    tournament: int
    prior: bool  # structured and sensitivity members start the population (prior.py)
    refine: bool  # grow from the best member, keep it, steps scaled to it, no cut evaluated twice (search)
    seconds: float | None  # wall-time budget, the sensitivity measurement included (None: none)
    summary: str


PRESETS = {
    "fast": Preset(
        80,
        12,
        3,
        True,
        True,
        120.0,
        "measured per-layer sensitivity and structured members start a short evolution (80 candidates, "
        "population 12, tournament 3), stopped after 120 s in all",
    ),
    "legr": Preset(
        400,
        64,
        16,
        False,
        False,
        None,
        "LeGR's reference: 400 candidates, population 64, tournament 16, identity, standardized and random "
        "initial members",
    ),
}


@dataclass
class SearchOptions:
    """The meta-learner's settings (LeGR's defaults)."""

    transforms: str | None = option(
        None, "transforms.json with learned (alpha, kappa) per group (method lcp; skips the search)", group=_GROUP
    )
    search_budget: float | None = option(
        None,
        "budget the search (or the lfgcl/amc agent) prunes to (default: every budget asked for: the search scores "
        "their mean held-out loss, the agents learn one profile per budget)",
        check=unit_interval,
        group=_GROUP,
    )
    search_preset: str = option(
        "fast", "; ".join(f"{k}: {p.summary}" for k, p in PRESETS.items()), choices=tuple(PRESETS), group=_GROUP
    )
    candidates: int | None = option(
        None, "candidates evaluated by the search (default: the preset's)", check=at_least(1), group=_GROUP
    )
    population: int | None = option(None, "legr population (default: the preset's)", check=at_least(1), group=_GROUP)
    tournament: int | None = option(
        None, "legr tournament size (default: the preset's)", check=at_least(1), group=_GROUP
    )
    optimizer: str = option(
        "legr", "legr (regularized evolution) or a nevergrad optimizer: ngopt, cma, de, ...", group=_GROUP
    )
    compensation: str = option(
        "affine", "affine: alpha*s+kappa (LeGR); additive: s+kappa (LcP)", choices=COMPENSATIONS, group=_GROUP
    )
    search_eval_images: int = option(1000, "held-out images that score each candidate", check=at_least(1), group=_GROUP)
    search_recal_batches: int = option(
        4, "training batches that recalibrate BatchNorm before a candidate is scored", check=at_least(1), group=_GROUP
    )
    tau: int = option(
        0, "SGD steps before scoring a candidate (or an lfgcl/amc episode)", check=at_least(0), group=_GROUP
    )
    label_free: bool = option(
        False, "fitness from matching the unpruned model's outputs (no labels needed; lfgcl always is)", group=_GROUP
    )
    workers: int = option(1, "local processes evaluating candidates", check=at_least(1), signature=False, group=_GROUP)
    executor: str | None = option(
        None, "dask://HOST:PORT to evaluate candidates on a Dask cluster", signature=False, group=_GROUP
    )
    search_time: float | None = option(
        None,
        "wall-time budget of the search in seconds, the sensitivity measurement included, over every run of a "
        "resumed search (default: the preset's, none with --search-stop; 0: none): it stops between candidates "
        "before the next would end past it; search.json records how many it evaluated and --search-stop with that "
        "count reproduces it",
        check=at_least(0),
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
    reads = frozenset(field_names(SearchOptions))

    def check(self, options: Any, budgets: list[float | None]) -> None:
        super().check(options, budgets)
        if not options.transforms:
            resolve_optimizer(options.optimizer)  # an unknown name is refused before any work
        if options.device != "cpu" and (options.workers > 1 or options.executor):
            raise LcpError(
                f"the lcp search on --device {options.device} scores candidates in this process: drop --workers "
                "and --executor (they spread the search over CPU processes)"
            )

    def learn(self, ctx: Context) -> Learned:
        o, graph = ctx.options, ctx.graph
        if o.transforms:
            loaded = Transforms.from_json(read_json(o.transforms, what="transforms file"), graph)
            loaded.check_scores(o, f"transforms file {o.transforms}")
            return Learned(transforms=loaded)
        ctx.need_data(self.name, "transforms")
        cost, scores = ctx.cost_and_scores()
        preset = PRESETS[o.search_preset]
        candidates = o.candidates or preset.candidates
        budgets = [o.search_budget] if o.search_budget else sorted(set(o.all_budgets()))
        ctx.log(
            f"learning the layer compensation: {o.optimizer} search ({o.search_preset} preset), {candidates} "
            f"candidates at {', '.join(f'{b:g}' for b in budgets)} of {o.budget_type}"
            + (" (mean held-out loss)" if len(budgets) > 1 else "")
        )
        write = ctx.writer and ctx.out is not None
        members, prior_s, skipped = [], 0.0, False
        # the preset's time budget yields to --search-stop, which reproduces a stopped search exactly
        limit = o.search_time if o.search_time is not None else (None if o.search_stop else preset.seconds)
        if limit and distributed(o.device)[0] > 1:  # every rank searches: a clock would stop each at its own count
            ctx.log(f"under torchrun the search evaluates all {candidates} candidates (no time budget) on every rank")
            limit = None
        if preset.prior and o.compensation == "affine":
            members, prior_s, skipped = self._prior(ctx, budgets, write, SENSITIVITY_SHARE * limit if limit else None)
        fitness = fitness_for(
            ctx,
            budgets,
            label_free=o.label_free,
            eval_images=o.search_eval_images,
            recal_batches=o.search_recal_batches,
        )
        time_budget = None if not limit else max(limit - prior_s, 1e-3)
        result = search(
            graph,
            scores,
            fitness,
            optimizer=o.optimizer,
            compensation=o.compensation,
            candidates=candidates,
            population=o.population or preset.population,
            tournament=o.tournament or preset.tournament,
            seed=o.seed,
            state_path=ctx.out / "search_state.json" if write else None,
            resume=o.resume,
            progress=o.progress and ctx.writer,
            workers=o.workers,
            executor=o.executor,
            members=members,
            refine=preset.refine,
            stop_after=o.search_stop,
            time_budget=time_budget,
            patience=o.search_patience,
        )
        first = result.history[0]["fitness"] if result.history else float("nan")
        ctx.log(
            f"search: {result.evaluated} of {candidates} candidates in {result.seconds:.0f} s"
            + (
                f" (stopped by {STOPPED_BY[result.stopped_by]}; "
                + (
                    f"--search-stop {result.evaluated} reproduces it)"
                    if not skipped  # --search-stop has no time cap, so it measures the sensitivity this run skipped
                    else f"the per-layer sensitivity was skipped too, which --search-stop {result.evaluated} does "
                    "not do: its cut may differ)"
                )
                if result.stopped_by in STOPPED_BY
                else ""
            )
            + f"; held-out fitness {first:.4f} (identity) -> {result.best_fitness:.4f}"
        )
        transforms = replace(result.transforms, learned_with=scores_of(o))
        if write:
            write_outputs(result, ctx.out, prior_seconds=prior_s, sensitivity_skipped=skipped)
            atomic_write_json(ctx.out / "transforms.json", transforms.to_json())
        return Learned(transforms=transforms)

    def _prior(
        self, ctx: Context, budgets: list[float], write: bool, cap: float | None
    ) -> tuple[list[np.ndarray], float, bool]:
        """The sensitivity and structured members (prior.py), the seconds the measurement took and whether it was
        skipped; the
        measurement is kept in ``sensitivity.json`` and reused by ``--resume``. If it would take more than
        ``cap`` seconds, it is given up (and stays so on ``--resume``) and the search starts from the structured
        members."""
        o, graph = ctx.options, ctx.graph
        cost, scores = ctx.cost_and_scores()
        key = {
            "scores": hashlib.sha256(np.nan_to_num(np.asarray(scores, dtype=np.float64)).tobytes()).hexdigest()[:16],
            "groups": [g.name for g in graph.groups],
            "levels": list(SENSITIVITY_LEVELS),
            "fitness": dict(SENSITIVITY_FITNESS, label_free=o.label_free, seed=o.seed, tau=o.tau),
            "min_ratio": o.min_ratio,
        }
        empty = graph.depth.copy() if graph.depth.any() else None  # depth units: also measured emptied
        if empty is not None:
            key["depth"] = [graph.groups[g].name for g in np.nonzero(empty)[0].tolist()]
        path = ctx.out / "sensitivity.json" if write else None
        cached = (
            read_json(path, what="sensitivity file") if (o.resume and path is not None and path.is_file()) else None
        )
        structured = structured_members(graph, scores, o.aggregate)[1:]  # the standardized member is always there
        if isinstance(cached, dict) and cached.get("key") == key and cached.get("skipped") is True:
            ctx.log(f"per-layer sensitivity: skipped, as in the run that wrote {path.name}")
            return structured, 0.0, True
        columns = len(SENSITIVITY_LEVELS) + (empty is not None)
        damage = _cached_damage(cached, key, (len(graph.groups), columns))
        if damage is not None:
            seconds = float(cached["seconds"])
            ctx.log(f"per-layer sensitivity: reused from {path.name} ({seconds:.0f} s when measured)")
        else:
            t0 = time.perf_counter()
            # an interrupted measurement's cuts (kept as it went) are not measured again
            known = _cached_partial(cached, key)
            before = float(cached.get("seconds", 0.0)) if known else 0.0
            if known:
                ctx.log(f"per-layer sensitivity: {len(known.get('measured', []))} cuts measured before, reused")

            def keep(partial: dict) -> None:  # the measurements so far, for --resume
                atomic_write_json(path, {"key": key, "seconds": before + time.perf_counter() - t0, "partial": partial})

            cheap = fitness_for(ctx, budgets, label_free=o.label_free, **SENSITIVITY_FITNESS)
            n = 1 + len(graph.groups) * len(SENSITIVITY_LEVELS) + (0 if empty is None else int(empty.sum()))
            with tqdm(total=n, desc="sensitivity", disable=not (o.progress and ctx.writer), leave=False) as bar:
                damage = measure_sensitivity(
                    graph,
                    scores,
                    cheap.for_removed,
                    graph.floors(o.min_ratio),
                    done=lambda i, total: bar.update(i - bar.n),
                    seconds=cap,
                    empty=empty,
                    known=known,
                    keep=keep if path is not None else None,
                )
            seconds = before + time.perf_counter() - t0
            if damage is None:
                ctx.log(
                    f"per-layer sensitivity skipped: {n} one-group cuts would take more than {cap:.0f} s of the "
                    "search's time budget; the search starts from the structured members"
                )
                if path is not None:
                    atomic_write_json(path, {"key": key, "seconds": seconds, "skipped": True})
                return structured, seconds, True
            ctx.log(f"per-layer sensitivity: {n} one-group cuts of {len(graph.groups)} groups in {seconds:.0f} s")
            if path is not None:
                atomic_write_json(path, {"key": key, "seconds": seconds, "damage": damage.tolist()})
        metric = o.budget_type  # a latency budget's cost model has the latency table
        members = sensitivity_members(graph, cost, scores, damage, metric=metric, empty=empty)
        return members + structured, seconds, False


def _cached_damage(cached: Any, key: dict, shape: tuple[int, int]) -> np.ndarray | None:
    """The damage kept in ``sensitivity.json`` if it was measured with ``key`` and is well formed (else None:
    measure again)."""
    if not isinstance(cached, dict) or cached.get("key") != key:
        return None
    try:
        damage = np.asarray(cached["damage"], dtype=np.float64)
        seconds = float(cached["seconds"])
    except (KeyError, TypeError, ValueError):
        return None
    if damage.shape != shape or not np.all(np.isfinite(damage)) or not np.isfinite(seconds):
        return None
    return damage


def _cached_partial(cached: Any, key: dict) -> dict | None:
    """The measurements an interrupted run kept in ``sensitivity.json`` (``measure_sensitivity``'s ``known``), if
    made with ``key`` and well formed (else None: measure from the start)."""
    if not isinstance(cached, dict) or cached.get("key") != key or not isinstance(cached.get("partial"), dict):
        return None
    partial = cached["partial"]
    try:
        base = float(partial["base"])
        rows = [(int(g), int(j), None if v is None else float(v)) for g, j, v in partial["measured"]]
        float(cached["seconds"])
    except (KeyError, TypeError, ValueError):
        return None
    return {"base": base, "measured": rows} if np.isfinite(base) else None

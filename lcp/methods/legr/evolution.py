"""Meta-learning of the layer compensation: search per-group ``(alpha, kappa)`` that minimise a pruning fitness.

``make_fitness`` builds the objective (prune to the search budget with the compensated ranking, recalibrate
BatchNorm, score on the held-out split; lower is better). ``search`` minimises it with LeGR's regularized
evolution (``optimizer="legr"``) or a nevergrad optimizer, checkpointing its state after every candidate so an
interrupted search resumes without losing an evaluation.

Candidates are vectors ``z = [log alpha (G), kappa (G)]`` over the G groups of the graph (nevergrad works on
``[log alpha, kappa / std_g]``, or ``kappa / std_g`` alone for the additive LcP form); ``std_g`` is the standard
deviation of group g's raw unit scores, LeGR's scale for kappa.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lcp.engine.graph import ChannelGraph
from lcp.errors import LcpError, first_line
from lcp.io import PathLike
from lcp.methods.legr.evaluator import Evaluator, SearchResult, group_std, standardized, transforms_from_vector
from lcp.methods.legr.fitness import FitnessFn
from lcp.methods.legr.state import SearchRun, SearchState

log = logging.getLogger("lcp.methods.legr")

#: Short optimizer names; any exact ``nevergrad.optimizers.registry`` key is accepted too.
OPTIMIZERS: dict[str, str] = {
    "legr": "legr",
    "ngopt": "NGOpt",
    "cma": "CMA",
    "de": "DE",
    "pso": "PSO",
    "oneplusone": "OnePlusOne",
}
COMPENSATIONS = ("affine", "additive")
_SIGMA_HORIZON = 1.25  # LeGR: step size 1 - i / (1.25 * candidates), i.e. 1 - i/500 for 400 candidates


def _legr(
    run: SearchRun,
    *,
    n_groups: int,
    std: np.ndarray,
    center: np.ndarray,
    additive: bool,
    population: int,
    tournament: int,
    mutate_frac: float,
    seed: int,
    seeds: Sequence[np.ndarray] = (),
    refine: bool = False,
    key: Callable[[np.ndarray], str] | None = None,
) -> None:
    """LeGR's regularized evolution (see ``search``); the RNG state is saved with each generated batch.

    The initial population is the identity, then ``seeds`` (fixed members), then LeGR's random members
    (alpha ~ LogNormal(0, 1), kappa ~ N(0, std_g)). ``refine`` (a short search from good members) changes four
    things: the other initial members are children of the best member so far; the best member is never aged
    out; a mutation of alpha keeps the group's mean compensated score (``center``: mean raw score per group)
    and kappa steps scale with alpha (the spread of the group's compensated scores); with ``key`` (the cut a
    vector gives), a child that would repeat a cut already evaluated is drawn again (up to 16 times)."""
    st, candidates = run.state, run.candidates
    rng = np.random.Generator(np.random.PCG64(seed))
    if st.rng is not None:
        rng.bit_generator.state = st.rng
    n_mut = max(1, int(mutate_frac * n_groups))
    width = run.evaluator.width
    seen: set[str] = set()
    if refine and key is not None:
        seen.update(key(np.asarray(e["z"])) for e in st.evaluated)
        seen.update(key(np.asarray(z)) for z in st.pending)

    def initial(k: int) -> np.ndarray:
        z = np.zeros(2 * n_groups)
        if 0 < k <= len(seeds):
            z[:] = seeds[k - 1]
        elif k > 0 and refine and st.pop_f:
            return child(k, parent=int(np.argmin(st.pop_f)))
        elif k > 0:  # member 0 is the identity (alpha 1, kappa 0)
            if not additive:
                z[:n_groups] = rng.normal(0.0, 1.0, n_groups)  # alpha ~ LogNormal(0, 1)
            z[n_groups:] = rng.normal(0.0, std)
        return z

    def mutate(z: np.ndarray, k: int) -> np.ndarray:
        z = z.copy()
        sigma = 1.0 - k / (_SIGMA_HORIZON * candidates)
        for g in np.unique(rng.integers(0, n_groups, size=n_mut)).tolist():  # with replacement, as LeGR
            step = rng.normal(0.0, sigma) if not additive else 0.0  # alpha *= exp(N(0, sigma^2))
            if refine:
                z[n_groups + g] -= (math.exp(z[g] + step) - math.exp(z[g])) * center[g]
            z[g] += step
            z[n_groups + g] += rng.normal(0.0, std[g] * (math.exp(z[g]) if refine else 1.0))
        return z

    def child(k: int, parent: int | None = None) -> np.ndarray:
        if parent is None:
            sampled = rng.integers(0, len(st.pop_f), size=tournament)  # with replacement
            parent = int(sampled[np.argmin(np.asarray(st.pop_f)[sampled])])
        z = np.asarray(st.pop_z[parent], dtype=np.float64)
        if not (refine and key is not None):
            return mutate(z, k)
        for _ in range(16):
            out = mutate(z, k)
            if key(out) not in seen:
                break
        seen.add(key(out))
        return out

    while st.pending or not run.done():
        k = len(st.evaluated)
        if not st.pending:
            if k < population:
                st.pending = [initial(k + i).tolist() for i in range(min(run.room(width), population - k))]
                if refine and key is not None:  # every cut generated so far, as a resumed run rebuilds it
                    seen.update(key(np.asarray(z)) for z in st.pending)
            else:
                st.pending = [child(k + i).tolist() for i in range(run.room(width))]
            st.rng = rng.bit_generator.state
        run.evaluate_pending()
        for i, z in enumerate(st.pending):
            value, seconds = st.results[i]
            run.tell(z, value, seconds)
            if len(st.pop_f) < population:
                st.pop_z.append(z)
                st.pop_f.append(value)
                st.queue.append(len(st.pop_f) - 1)
            else:  # aging: the child replaces the oldest member (with refine, never the best)
                best = int(np.argmin(st.pop_f))
                at = next((j for j, q in enumerate(st.queue) if not (refine and q == best)), 0)
                slot = st.queue.pop(at)
                st.pop_z[slot], st.pop_f[slot] = z, value
                st.queue.append(slot)
        st.pending, st.results = [], {}
        run.save()


def _nevergrad(run: SearchRun, name: str, dim: int, seed: int, seeds: Sequence[np.ndarray] = ()) -> None:
    """A nevergrad optimizer over ``dim`` coordinates, told the identity (all zeros) and then ``seeds`` (in its
    own coordinates) as its first candidates.

    Resumption replays the stored (candidate, fitness) pairs into a fresh optimizer with the same seed: each
    asked point that equals the stored one is told the stored fitness. If the optimizer asks something else
    (a non-deterministic optimizer), the stored point is told instead as a non-asked candidate, with a warning
    that the continuation may differ from an uninterrupted run. Failed candidates (+inf) are told a finite
    penalty, twice the worst finite fitness so far plus one, since some optimizers reject inf.
    """
    import nevergrad as ng

    st, candidates, width = run.state, run.candidates, run.evaluator.width
    param = ng.p.Array(init=np.zeros(dim))
    param.random_state = np.random.RandomState(seed)
    try:
        opt = ng.optimizers.registry[name](parametrization=param, budget=candidates, num_workers=width)
    except Exception as e:
        raise LcpError(f"nevergrad optimizer {name} cannot run here: {first_line(e)}") from None
    opt.suggest(np.zeros(dim))
    for member in seeds:
        opt.suggest(np.asarray(member, dtype=np.float64))
    worst = [1.0]

    def tell(cand: Any, value: float) -> None:
        if math.isfinite(value):
            worst[0] = max(worst[0], abs(value))
        opt.tell(cand, value if math.isfinite(value) else 2.0 * worst[0] + 1.0)

    def replayed(cand: Any, z: Sequence[float]) -> Any:
        if np.array_equal(cand.value, np.asarray(z)):
            return cand
        log.warning("nevergrad asked a different point on replay; the resumed search may differ")
        return opt.parametrization.spawn_child(new_value=np.asarray(z, dtype=np.float64))

    n_stored = len(st.evaluated)
    old_pending, old_results = list(st.pending), dict(st.results)
    k = 0
    while k < run.limit and (k < n_stored or not run.done()):
        n = min(width, run.limit - k)
        asked = [opt.ask() for _ in range(n)]
        new: list[int] = []
        for i in range(n):
            if k + i < n_stored:
                e = st.evaluated[k + i]
                asked[i] = replayed(asked[i], e["z"])
                tell(asked[i], e["fitness"])
            else:
                new.append(i)
        if new:
            st.pending, st.results = [], {}
            for p, i in enumerate(new):
                q = k + i - n_stored  # position in the pending list of the resumed state
                if q < len(old_pending) and q in old_results:
                    asked[i] = replayed(asked[i], old_pending[q])
                    st.results[p] = old_results[q]
                st.pending.append(np.asarray(asked[i].value, dtype=np.float64).tolist())
            run.evaluate_pending()
            for p, i in enumerate(new):
                value, seconds = st.results[p]
                tell(asked[i], value)
                run.tell(st.pending[p], value, seconds)
            st.pending, st.results = [], {}
            run.save()
        k += n


def _key_of(
    fitness: FitnessFn, graph: ChannelGraph, decode: Callable[[np.ndarray], np.ndarray]
) -> Callable[[np.ndarray], str] | None:
    key = getattr(fitness, "key", None)
    if key is None:
        return None
    return lambda z: key(transforms_from_vector(graph, decode(z)))


def resolve_optimizer(name: str) -> str:
    """The nevergrad registry name (or ``legr``) of ``name``; an unknown name is an ``LcpError``."""
    if name.lower() in OPTIMIZERS:
        return OPTIMIZERS[name.lower()]
    import nevergrad as ng

    if name in ng.optimizers.registry:
        return name
    close = difflib.get_close_matches(name, list(OPTIMIZERS) + sorted(ng.optimizers.registry), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise LcpError(
        f"unknown optimizer {name!r}{hint}; choose one of {', '.join(OPTIMIZERS)} or any nevergrad registry name"
    )


def search(
    graph: ChannelGraph,
    scores: np.ndarray,
    fitness: FitnessFn,
    *,
    optimizer: str = "legr",
    compensation: str = "affine",
    candidates: int = 400,
    population: int = 64,
    tournament: int = 16,
    mutate_frac: float = 0.1,
    seed: int = 0,
    state_path: PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    workers: int = 1,
    executor: Any = None,
    standardized_member: bool = True,
    members: Sequence[np.ndarray] = (),
    refine: bool = False,
    stop_after: int | None = None,
    time_budget: float | None = None,
    patience: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SearchResult:
    """Minimise ``fitness`` over per-group ``(alpha, kappa)``; the identity is always the first candidate.

    ``optimizer``: ``legr`` (LeGR's regularized evolution: ``population`` members, the identity and random
    ones with alpha ~ LogNormal(0, 1) and kappa ~ N(0, std_g), plus, with ``standardized_member``, the
    compensation that gives every group the same score mean and std (:func:`standardized`, a near-uniform
    ranking) as the second member; then each child mutates the winner of a
    ``tournament`` drawn with replacement in ``mutate_frac`` of the groups, alpha times exp(N(0, s^2)) with s
    decaying as 1 - i / (1.25 candidates) and kappa plus N(0, std_g^2), and replaces the oldest member), or a
    nevergrad optimizer (``ngopt``, ``cma``, ``de``, ``pso``, ``oneplusone`` or any registry name).
    ``members``: more fixed initial members as ``[log alpha, kappa]`` vectors (``prior.structured_members``,
    ``prior.sensitivity_members``), evaluated right after the identity (and the standardized member); for
    nevergrad they are suggested after the identity. ``refine`` (legr) grows the rest of the population from
    the best member, keeps the best from aging out, scales the steps to each group's compensated scores and,
    when ``fitness`` has a ``key`` (``Fitness.key``: the cut a candidate makes), does not evaluate a cut twice.
    ``compensation="additive"`` is LcP's kappa-only form (alpha stays 1; ``members`` must keep alpha 1). The
    result is the best candidate ever evaluated (ties keep the earlier one, so it is never worse than the
    identity on this fitness).

    ``state_path``: the state is written there atomically after every candidate; ``resume=True`` continues
    from it, losing no evaluation, and ends with the same transforms as an uninterrupted run with the same
    settings. ``workers > 1`` (local processes) or ``executor`` (a dask ``Client``, ``"dask://HOST:PORT"`` or a
    ``concurrent.futures`` executor) evaluate candidates concurrently in batches of the pool's width: legr
    breeds a batch of children from the population as it stands, and every batch is told in candidate order,
    so results depend on the seed and the width, not on timing.

    ``time_budget`` (seconds of wall time by ``clock``, over every run of a resumed search) stops the search
    between batches once it is spent; ``patience`` stops it once the best fitness has not improved for that many
    candidates (convergence); ``stop_after`` stops it after that many candidates. All keep the schedule
    of ``candidates`` (LeGR's step size decays over ``candidates``), so a search stopped by time after N
    candidates is reproduced exactly by ``stop_after=N`` (``SearchResult.evaluated``).
    """
    if compensation not in COMPENSATIONS:
        raise LcpError(f"unknown compensation {compensation!r}; choose one of {', '.join(COMPENSATIONS)}")
    if candidates < 1 or population < 1 or tournament < 1 or workers < 1 or not 0 < mutate_frac <= 1:
        raise LcpError("candidates, population, tournament and workers must be at least 1, mutate_frac in (0, 1]")
    name = resolve_optimizer(optimizer)
    n = len(graph.groups)
    if n == 0:
        raise LcpError("nothing to search: the model has no prunable channel groups")
    if len(scores) != len(graph.units):
        raise LcpError(f"scores has {len(scores)} entries, the graph has {len(graph.units)} units")
    std = group_std(graph, scores)
    additive = compensation == "additive"
    fingerprint = hashlib.sha256(np.nan_to_num(np.asarray(scores, dtype=np.float64)).tobytes()).hexdigest()[:16]
    settings = {
        "optimizer": name,
        "compensation": compensation,
        "candidates": candidates,
        "seed": seed,
        "groups": [g.name for g in graph.groups],
        "scores": fingerprint,
    }
    fixed = [np.asarray(m, dtype=np.float64) for m in members]
    if any(m.shape != (2 * n,) or not np.all(np.isfinite(m)) for m in fixed):
        raise LcpError(f"members must be finite [log alpha, kappa] vectors of length {2 * n}")
    if fixed:
        settings["members"] = hashlib.sha256(np.stack(fixed).tobytes()).hexdigest()[:16]
    if name == "legr":
        settings.update(
            population=population,
            tournament=tournament,
            mutate_frac=mutate_frac,
            standardized_member=standardized_member,
        )
        if refine:
            settings.update(refine=True)

        def decode(z: np.ndarray) -> np.ndarray:
            return z
    else:

        def decode(z: np.ndarray) -> np.ndarray:  # optimizer space -> [log alpha, kappa]
            if additive:
                return np.concatenate([np.zeros(n), z * std])
            return np.concatenate([z[:n], z[n:] * std])

    path = Path(state_path) if state_path is not None else None
    state = (
        SearchState.load(path, settings) if (resume and path is not None and path.is_file()) else SearchState(settings)
    )
    evaluator = Evaluator(fitness, workers, executor)
    if any(v is not None and not v > 0 for v in (stop_after, time_budget, patience)):
        raise LcpError("stop_after, time_budget and patience must be positive")
    run = SearchRun(
        graph,
        state,
        path,
        candidates,
        evaluator,
        progress,
        decode,
        stop_after=stop_after,
        time_budget=time_budget,
        patience=patience,
        clock=clock,
    )
    try:
        if name == "legr":
            _legr(
                run,
                n_groups=n,
                std=std,
                center=np.array([float(np.nan_to_num(np.nanmean(np.asarray(scores)[g.units]))) for g in graph.groups]),
                additive=additive,
                population=population,
                tournament=tournament,
                mutate_frac=mutate_frac,
                seed=seed,
                seeds=([standardized(graph, scores, additive)] if standardized_member else []) + fixed,
                refine=refine,
                key=_key_of(fitness, graph, decode) if refine else None,
            )
        else:
            encoded = [m[n:] / std if additive else np.concatenate([m[:n], m[n:] / std]) for m in fixed]
            _nevergrad(run, name, n if additive else 2 * n, seed, encoded)
    finally:
        evaluator.close()
        run.bar.close()
    return run.result()

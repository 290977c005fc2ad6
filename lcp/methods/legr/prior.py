"""Where the search starts: structured members and a measured per-layer sensitivity (the ``fast`` preset).

LeGR starts from the identity and random compensations, most of which waste candidates (a random member puts
several groups at their floor). A short search needs good starting points instead:

- **structured members**, free to build: the ``standardized`` ranking (every group at the same quantile), the
  same with the residual streams kept whole (a stream is a group written by several dense layers, e.g. the
  outputs of every block of a ResNet stage), and the ranking of summed producer scores (LeGR's own code sums a
  stream channel's scores, so its streams are in effect never cut);
- **the sensitivity members**, measured (what FastNAS and NetAdapt do): for each group alone, the held-out loss
  after keeping ``SENSITIVITY_LEVELS`` of its units (lowest scores cut first; BatchNorm recalibrated), as a
  damage above the unpruned loss. The first member's compensation maps each unit to the damage per MAC of
  removing it (the convexified slope of its group's damage curve divided by the group's MACs per removed
  fraction), so one global ranking of compensated scores removes first what costs the least loss per MAC saved:
  an equal-marginal-damage allocation that still serves every budget. The second assumes damage grows three
  times faster beyond the deepest measured cut; the third is FastNAS's rule (one threshold on damage). Which is
  best differs with the model and the images (measured: MobileNetV2 at 0.5 MACs, seeds 0 and 1, held-out loss
  1.01 / 1.35 / 1.56 and 1.83 / 1.23 / 1.34), and each costs one candidate, so all three start the search.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lcp.engine.cost import CostModel
from lcp.engine.graph import ChannelGraph
from lcp.methods.legr.evaluator import standardized

#: keep ratios at which each group's damage is measured (one group cut at a time)
SENSITIVITY_LEVELS = (0.25, 0.5, 0.75)
#: the cheap fitness of the sensitivity measurement: held-out images, recalibration batches and their size
SENSITIVITY_FITNESS = {"eval_images": 256, "recal_batches": 1, "batch_size": 128}


def stream_groups(graph: ChannelGraph) -> np.ndarray:
    """Mask of the groups written by more than one dense (not depthwise) layer: residual streams."""
    out = np.zeros(len(graph.groups), dtype=bool)
    for g in graph.groups:
        dense = [p for p in g.producers if graph.records[graph.record_index[p]].mode != "depthwise"]
        out[g.index] = len(dense) > 1
    return out


def _prunable(graph: ChannelGraph, group: int) -> np.ndarray:
    return np.array([u for u in graph.groups[group].units if graph.units[u].prunable], dtype=np.int64)


def structured_members(graph: ChannelGraph, scores: np.ndarray, aggregate: str = "mean") -> list[np.ndarray]:
    """``[log alpha, kappa]`` of the standardized ranking, the standardized ranking with the residual streams
    kept whole (when there are streams) and, for mean-aggregated scores, the ranking of summed scores."""
    n = len(graph.groups)
    std = standardized(graph, scores)
    members = [std]
    streams = stream_groups(graph)
    if streams.any():
        prunable = np.asarray(graph.prunable_units, dtype=np.int64)
        top = float(np.nanmax(np.abs(np.asarray(scores)[prunable]))) if len(prunable) else 1.0
        kept = std.copy()
        # far above any compensated score: the walk reaches these groups only if nothing else is left
        kept[n:][streams] += 1e3 * (top * np.exp(std[:n][streams]) + 1.0)
        members.append(kept)
    if aggregate == "mean":
        producers = np.ones(n)
        for g in graph.groups:
            units = _prunable(graph, g.index)
            if len(units):
                producers[g.index] = len(graph.units[units[0]].producers)
        summed = np.zeros(2 * n)
        summed[:n] = np.log(np.maximum(producers, 1))
        if np.any(summed[:n] != 0):
            members.append(summed)
    return members


def measure_sensitivity(
    graph: ChannelGraph,
    scores: np.ndarray,
    loss_of: Callable[[np.ndarray], float],
    floors: np.ndarray,
    *,
    levels: Sequence[float] = SENSITIVITY_LEVELS,
    done: Callable[[int, int], None] | None = None,
    seconds: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    empty: np.ndarray | None = None,
    known: Mapping[str, Any] | None = None,
    keep: Callable[[dict[str, Any]], None] | None = None,
    keep_every: float = 10.0,
) -> np.ndarray | None:
    """Damage (held-out loss above the unpruned network's) per group and keep level, shape ``(G, len(levels))``.

    ``loss_of(removed)`` scores a removal mask (``Fitness.for_removed``); ``floors``: units each group keeps at
    least. Damage is made monotone (keeping less never hurts less) and a failed cut counts as the worst damage
    measured. ``done(i, total)`` is called after each measurement (progress). ``seconds``: if the first two
    measurements project a longer total (a large model on a slow device), stop there and return None.
    ``empty`` (bool per group, depth units): those groups are also measured emptied (their residual branch
    removed), in one more column (the deepest level's damage for the other groups). ``keep(partial)`` is called
    with the measurements so far at most every ``keep_every`` seconds and when the measurement is interrupted
    (Ctrl-C, an error); passing that ``partial`` back as ``known`` measures only the rest.
    """
    extra = np.zeros(len(graph.groups), dtype=bool) if empty is None else np.asarray(empty, dtype=bool)
    total = 1 + len(graph.groups) * len(levels) + int(extra.sum())
    start = last_kept = clock()
    measured: dict[tuple[int, int], float] = {
        (int(g), int(j)): (float("inf") if v is None else float(v)) for g, j, v in (known or {}).get("measured", [])
    }
    base: float | None = (known or {}).get("base")

    def progress(i: int) -> None:
        nonlocal last_kept
        if done:
            done(i, total)
        if keep and clock() - last_kept >= keep_every:
            keep(_partial(base, measured))
            last_kept = clock()

    made = [0]  # measurements this call made (not the known ones): what the time projection is based on
    projected = (0, 0) not in measured  # a resumed measurement that got past the first cut passed the projection

    def damage_of(g: int, j: int, removed: np.ndarray) -> float:
        if (g, j) not in measured:
            made[0] += bool(removed.any())
            measured[(g, j)] = loss_of(removed) - base if removed.any() else 0.0
        return measured[(g, j)]

    damage = np.zeros((len(graph.groups), len(levels)))
    emptied = np.full(len(graph.groups), np.nan)
    try:
        if base is None:
            base = loss_of(np.zeros(len(graph.units), dtype=bool))
            made[0] += 1
        progress(1)
        for g in graph.groups:
            units = _prunable(graph, g.index)
            order = units[np.argsort(np.asarray(scores)[units], kind="stable")]
            for j, keep_level in enumerate(levels):
                n_keep = max(int(floors[g.index]), int(round(keep_level * len(units))))
                removed = np.zeros(len(graph.units), dtype=bool)
                removed[order[: max(0, len(units) - n_keep)]] = True
                damage[g.index, j] = damage_of(g.index, j, removed)
                progress(1 + g.index * len(levels) + j + 1)
                if seconds is not None and projected and g.index == 0 and j == 0 and made[0]:
                    if (clock() - start) / made[0] * total > seconds:
                        return None
        for i, g in enumerate(np.nonzero(extra)[0].tolist()):
            removed = np.zeros(len(graph.units), dtype=bool)
            removed[_prunable(graph, g)] = True
            emptied[g] = damage_of(g, len(levels), removed)
            progress(1 + len(graph.groups) * len(levels) + i + 1)
    except BaseException:
        if keep and base is not None:
            keep(_partial(base, measured))
        raise
    damage = np.concatenate([damage, emptied[:, None]], axis=1) if empty is not None else damage
    finite = damage[np.isfinite(damage)]
    worst = float(finite.max()) if finite.size else 1.0
    failed = 10.0 * max(worst, 1.0)
    if empty is not None:  # the extra column: measured for depth units, the deepest level's for the rest
        damage[~extra, -1] = np.nan
    body = damage[:, : len(levels)]
    body = np.where(np.isfinite(body), body, failed)
    order = np.argsort(levels)  # from the smallest keep
    body = body[:, order]
    for j in range(len(levels) - 2, -1, -1):
        body[:, j] = np.maximum(body[:, j], body[:, j + 1])
    out = np.empty_like(body)
    out[:, order] = np.maximum(body, 0.0)
    if empty is None:
        return out
    last = damage[:, -1]
    last = np.where(extra, np.where(np.isfinite(last), last, failed), 0.0)
    return np.concatenate([out, np.maximum(last, body[:, 0])[:, None]], axis=1)


def _partial(base: float, measured: dict[tuple[int, int], float]) -> dict[str, Any]:
    """What ``measure_sensitivity`` hands to ``keep``: JSON-ready (a failed cut's infinite damage as null)."""
    rows = [[g, j, v if np.isfinite(v) else None] for (g, j), v in sorted(measured.items())]
    return {"base": base, "measured": rows}


def sensitivity_member(
    graph: ChannelGraph,
    cost: CostModel,
    scores: np.ndarray,
    damage: np.ndarray,
    *,
    levels: Sequence[float] = SENSITIVITY_LEVELS,
    metric: str = "macs",
    beyond: float = 1.0,
    per_cost: bool = True,
    empty: np.ndarray | None = None,
) -> np.ndarray:
    """``[log alpha, kappa]`` whose compensated scores approximate each unit's damage per ``metric`` saved
    (``macs``, ``params``, or ``latency`` when ``cost`` has a latency table).

    A unit at within-group score quantile q is removed when the group has lost a fraction q of its units; its
    target value is the damage per unit of cost saved in the measured segment of the group's curve that holds
    q (the same cuts as the measurement, priced by ``cost``, convexified so it grows with q). Beyond the
    deepest measured cut the last value times ``beyond`` is used. ``per_cost=False`` targets the damage itself
    instead (FastNAS: one threshold on each layer's damage, whatever it saves). The affine (alpha, kappa) is
    the least-squares fit of that target on the unit's raw score over the lowest 90% of the group (where cuts
    happen). ``empty`` (depth units; ``damage`` then has the emptied group's damage as an extra last column):
    their curve ends at the measured removal of the branch, priced at what the whole branch saves (at batch 1
    on a CPU far more time than its MACs say), instead of the extrapolation.
    """
    n = len(graph.groups)
    s_all = np.asarray(scores, dtype=np.float64)
    keep = np.asarray(levels, dtype=np.float64)
    order = np.argsort(-keep)  # from the largest keep: removed fraction grows
    removed_frac = np.concatenate([[0.0], 1.0 - keep[order]])
    base = _cost(cost, np.zeros(len(graph.units), dtype=bool), metric)
    scale = max(base, 1e-12)
    z = np.zeros(2 * n)
    for g in graph.groups:
        units = _prunable(graph, g.index)
        if len(units) < 2:
            continue
        ranked = units[np.argsort(s_all[units], kind="stable")]
        depth = empty is not None and bool(empty[g.index])
        fracs = list(removed_frac[1:]) + ([1.0] if depth else [])
        saved = [0.0]
        for f in fracs:  # the measured cuts (lowest scores first), priced
            removed = np.zeros(len(graph.units), dtype=bool)
            removed[ranked[: int(round(f * len(units)))]] = True
            saved.append((base - _cost(cost, removed, metric)) / scale)
        curve = np.concatenate([[0.0], damage[g.index, order]])
        if depth:
            curve = np.concatenate([curve, [max(float(damage[g.index, len(keep)]), curve[-1])]])
        edges = np.asarray([0.0, *fracs])  # removed fraction at each point of the curve
        per = np.maximum.accumulate(np.diff(curve) / np.maximum(np.diff(saved), 1e-9))  # damage per cost saved
        slope = np.maximum.accumulate(np.diff(curve) / np.maximum(np.diff(edges), 1e-9))  # damage per fraction
        if not depth:  # beyond the deepest measured cut
            per, slope = np.append(per, per[-1] * beyond), np.append(slope, slope[-1] * beyond)
        s = s_all[units]
        q = (np.argsort(np.argsort(s, kind="stable"), kind="stable") + 0.5) / len(s)
        segment = np.clip(np.searchsorted(edges, q, side="right") - 1, 0, len(per) - 1)
        if per_cost:
            target = per[segment]
        else:  # FastNAS: the group's damage when cut down to this unit (one threshold on damage)
            target = curve[np.minimum(segment, len(curve) - 1)] + slope[segment] * (q - edges[segment])
        sel = q <= 0.9
        a_mat = np.vstack([s[sel], np.ones(int(sel.sum()))]).T
        (alpha, kappa), *_ = np.linalg.lstsq(a_mat, target[sel], rcond=None)
        spread = float(np.std(s))
        if not (math.isfinite(alpha) and alpha > 0):  # flat or inverted fit: keep the group's order, its level
            alpha = 1e-6 * (float(np.std(target)) + 1e-12) / (spread + 1e-12)
            kappa = float(np.mean(target)) - alpha * float(np.mean(s))
        z[g.index], z[n + g.index] = math.log(alpha), kappa
    return np.where(np.isfinite(z), z, 0.0)


def _cost(cost: CostModel, removed: np.ndarray, metric: str) -> float:
    """``metric`` (macs, params, latency) of the configuration without ``removed``; the cost model is reset."""
    cost.reset()
    for u in np.nonzero(removed)[0].tolist():
        cost.remove(u)
    value = float(cost.value(metric))
    cost.reset()
    return value


def sensitivity_members(
    graph: ChannelGraph,
    cost: CostModel,
    scores: np.ndarray,
    damage: np.ndarray,
    *,
    metric: str = "macs",
    empty: np.ndarray | None = None,
) -> list[np.ndarray]:
    """The three sensitivity members (see the module docstring), duplicates dropped."""
    out: list[np.ndarray] = []
    for kw in ({}, {"beyond": 3.0}, {"per_cost": False}):
        z = sensitivity_member(graph, cost, scores, damage, metric=metric, empty=empty, **kw)
        if not any(np.array_equal(z, o) for o in out):
            out.append(z)
    return out

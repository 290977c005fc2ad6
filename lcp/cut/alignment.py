"""Hardware-aligned widths (``round_to="auto"``): the channel multiple this device runs most cheaply.

Kernels are often fastest at widths that are multiples of 4, 8 or 16 (tensor cores, vector registers, blocked
memory layouts): a width just off such a multiple can cost as much as the next multiple, or more, which is how a
pruned network with fewer MACs ends up no faster, or slower, than its original. ``measure_alignment`` times the
network's most expensive dense conv alone (its kernel, stride and input size; input and output widths pruned
together, as a cut does) at ``BAND`` consecutive widths, fits a smooth quadratic to those times, and scores each
alignment by the mean of its multiples' time over the fit: below 1 where aligned widths run cheaper than their
neighbours. ``round_to="auto"`` takes the smallest alignment scored within ``TOLERANCE`` of the best one. For a group
narrower than four times the alignment the multiple is halved until it is at most a quarter of the group's width
(:func:`group_alignment`: with 16, a 16-channel group keeps multiples of 4).
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lcp.cut import latency as timing
from lcp.cut.latency_table import input_shapes
from lcp.engine.graph import ChannelGraph
from lcp.errors import LcpError

ALIGNMENTS = (1, 2, 4, 8, 16)
TOLERANCE = 0.1
BAND = 48  # consecutive widths timed, ending at the probe's width rounded up to 16 (three multiples of 16)


@dataclass
class Alignment:
    """What ``measure_alignment`` found: the chosen ``round_to``, each alignment's score (mean time of its
    multiples over the fitted curve), the layer it timed and the widths' times in milliseconds."""

    round_to: int
    score: dict[int, float]
    layer: str
    ms: dict[int, float] = field(default_factory=dict)

    def describe(self) -> str:
        scores = ", ".join(f"x{a}: {s:.2f}" for a, s in self.score.items())
        return (
            f"--round-to auto chose {self.round_to} (time over the fitted curve per alignment {scores}; "
            f"timed {self.layer})"
        )


def _probe_record(graph: ChannelGraph) -> tuple[str, int]:
    """The name and the smaller width (input or output) of the dense (not depthwise) conv with the most MACs
    (ties: the widest), else of any conv or linear layer."""
    best, best_key = None, None
    for r in graph.records:
        if r.kind not in ("conv", "linear") or r.out_ids is None or r.in_ids is None:
            continue
        macs = len(r.out_ids) * len(r.in_ids) // max(1, r.groups) * r.kernel * max(1, r.spatial)
        key = (r.mode == "dense", macs, min(len(r.out_ids), len(r.in_ids)))
        if best_key is None or key > best_key:
            best, best_key = r, key
    if best is None:
        raise LcpError("--round-to auto: the model has no prunable conv or linear layer to time")
    return best.name, min(len(best.out_ids), len(best.in_ids))


def group_alignment(sizes: np.ndarray, round_to: int) -> np.ndarray:
    """Each group's width multiple: ``round_to``, halved (down to 1) until it is at most a quarter of the group's
    width, so that every group keeps at least four widths to choose from (``round_to=16``: groups of 64 channels
    or more in multiples of 16, a 32-channel group in multiples of 8, a 16-channel group in multiples of 4)."""
    align = np.full(len(sizes), max(1, int(round_to)), dtype=np.int64)
    for g, n in enumerate(sizes):
        while align[g] > 1 and align[g] * 4 > n:
            align[g] //= 2
    return align


def measure_alignment(
    graph: ChannelGraph,
    *,
    device: str = "cpu",
    batch: int = 1,
    n_threads: int | None = None,
    rounds: int = 3,
    repeats: int = 5,
) -> Alignment:
    """Time the costliest conv of ``graph`` at consecutive widths on ``device`` and choose the alignment (see the
    module docstring). ``rounds`` interleaved passes over the widths, ``repeats`` timings each; medians."""
    name, width = _probe_record(graph)
    module = dict(graph.model.named_modules())[name]
    shapes = input_shapes(graph, {name})[name]
    hi = max(BAND, -(-width // 16) * 16)
    widths = list(range(hi - BAND + 1, hi + 1))
    dev = torch.device(device)
    times: dict[int, list[float]] = {c: [] for c in widths}
    with timing.threads(n_threads):
        timing.time_layer(module, widths[0], widths[0], False, shapes, batch=batch, dev=dev, warmup=3, repeats=1)
        for _ in range(rounds):
            for c in widths:
                times[c].append(
                    timing.time_layer(module, c, c, False, shapes, batch=batch, dev=dev, warmup=1, repeats=repeats)
                )
    ms = {c: statistics.median(t) for c, t in times.items()}
    chosen, score = choose_alignment(ms)
    return Alignment(chosen, score, f"{name} at batch {batch}, widths {widths[0]}-{widths[-1]}", ms)


def choose_alignment(
    ms: dict[int, float], allowed: tuple[int, ...] | list[int] = ALIGNMENTS
) -> tuple[int, dict[int, float]]:
    """The alignment rule on timings ``ms`` (width -> time): a quadratic least-squares fit of time against width,
    each ``allowed`` alignment's score (the mean over its multiples of time / fit) and the smallest one scored
    within ``TOLERANCE`` of the best."""
    widths = sorted(ms)
    fit = np.polyval(np.polyfit(widths, [ms[c] for c in widths], 2), widths)
    ratio = {c: ms[c] / max(f, 1e-12) for c, f in zip(widths, fit)}
    score = {}
    for a in allowed:
        mine = [ratio[c] for c in widths if c % a == 0]
        if mine:
            score[a] = round(float(np.mean(mine)), 3)
    best = min(score.values())
    return next(a for a in score if score[a] <= best * (1 + TOLERANCE)), score


def resolve_round_to(options: Any, graph: ChannelGraph, known: int | None = None) -> tuple[Any, Alignment | None]:
    """``options`` with ``round_to="auto"`` replaced by the alignment measured on ``options.device`` at
    ``options.latency_batch`` (or by ``known``, the value an earlier part of a resumed run measured); other
    values unchanged. Returns the options and the measurement (None when nothing was measured)."""
    if options.round_to != "auto":
        return options, None
    if known is not None:
        return dataclasses.replace(options, round_to=int(known)), None
    found = measure_alignment(graph, device=options.device, batch=options.latency_batch, n_threads=options.threads)
    return dataclasses.replace(options, round_to=found.round_to), found

"""Candidates of the search and their evaluation: serial, in local processes, or on a Dask cluster."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import multiprocessing
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lcp.cut.transforms import Transforms
from lcp.engine.graph import ChannelGraph
from lcp.errors import LcpError, first_line
from lcp.methods.legr.fitness import FitnessFn

log = logging.getLogger("lcp.methods.legr")


# ----------------------------------------------------------------------------------------------- candidates


@dataclass
class SearchResult:
    """Best transforms found, their fitness and one history row per evaluated candidate; ``stopped_by``:
    ``candidates`` (the limit) or ``time`` (the time budget); ``seconds``: wall time of the whole search."""

    transforms: Transforms
    best_fitness: float
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_by: str = "candidates"
    seconds: float = 0.0

    @property
    def evaluated(self) -> int:
        return len(self.history)


def group_std(graph: ChannelGraph, scores: np.ndarray) -> np.ndarray:
    """Std of each group's raw unit scores (kappa's scale); groups with one unit or no spread use the global std."""
    prunable = np.asarray(graph.prunable_units, dtype=np.int64)
    fallback = float(np.std(scores[prunable])) if len(prunable) else 1.0
    fallback = fallback if math.isfinite(fallback) and fallback > 0 else 1.0
    out = np.empty(len(graph.groups))
    for g in graph.groups:
        s = float(np.std(scores[np.asarray(g.units)]))
        out[g.index] = s if math.isfinite(s) and s > 0 else fallback
    return out


def standardized(graph: ChannelGraph, scores: np.ndarray, additive: bool = False) -> np.ndarray:
    """``[log alpha, kappa]`` that give every group the mean and std of all prunable units' scores.

    A global threshold then cuts each group at about the same quantile: a near-uniform ranking that still
    orders filters by score inside each group. ``additive``: only the means are aligned (alpha stays 1).
    """
    n = len(graph.groups)
    prunable = np.asarray(graph.prunable_units, dtype=np.int64)
    ref = np.asarray(scores, dtype=np.float64)[prunable] if len(prunable) else np.zeros(1)
    ref_mean, ref_std = float(np.mean(ref)), float(np.std(ref))
    std = group_std(graph, scores)
    log_alpha = np.zeros(n) if additive else np.log(np.where(ref_std > 0, ref_std, 1.0) / std)
    kappa = np.empty(n)
    for g in graph.groups:
        kappa[g.index] = ref_mean - np.exp(log_alpha[g.index]) * float(np.mean(scores[np.asarray(g.units)]))
    z = np.concatenate([log_alpha, kappa])
    return np.where(np.isfinite(z), z, 0.0)


def transforms_from_vector(graph: ChannelGraph, z: np.ndarray) -> Transforms:
    n = len(graph.groups)
    return Transforms(np.exp(z[:n]), z[n:].copy(), [g.name for g in graph.groups])


def timed_call(fitness: FitnessFn, transforms: Transforms) -> tuple[float, float]:
    """(fitness, seconds); a failing or non-finite candidate gives +inf with a logged reason."""
    t0 = time.perf_counter()
    try:
        value = float(fitness(transforms))
    except Exception as e:
        log.warning("candidate skipped (fitness +inf): %s: %s", type(e).__name__, first_line(e))
        value = math.inf
    if math.isnan(value):
        log.warning("candidate skipped (fitness +inf): the fitness is NaN")
        value = math.inf
    return value, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ evaluation

_WORKER_FITNESS: FitnessFn | None = None


def _init_worker(fitness: FitnessFn, threads: int) -> None:
    global _WORKER_FITNESS
    _WORKER_FITNESS = fitness
    torch.set_num_threads(threads)


def _worker_call(transforms: Transforms) -> tuple[float, float]:
    assert _WORKER_FITNESS is not None
    return timed_call(_WORKER_FITNESS, transforms)


class Evaluator:
    """Runs candidates in process, in local worker processes, or on a Dask cluster; results as they finish."""

    def __init__(self, fitness: FitnessFn, workers: int, executor: Any):
        self.fitness = fitness
        self.pool: Any = None  # concurrent.futures-like executor
        self.client: Any = None  # dask.distributed Client
        self.local = False  # our own fork pool: the workers hold the fitness already
        self.own = False  # we created the pool or client and must close it
        if isinstance(executor, str):
            if not executor.startswith("dask://"):
                raise LcpError(f"unknown executor {executor!r}: use dask://HOST:PORT (a Dask scheduler)")
            from distributed import Client

            try:
                self.client = Client("tcp://" + executor[len("dask://") :], timeout="20s")
            except Exception as e:
                raise LcpError(f"cannot reach the Dask scheduler at {executor}: {first_line(e)}") from None
            self.own = True
        elif executor is not None and type(executor).__module__.startswith("distributed"):
            self.client = executor
        elif executor is not None:
            self.pool = executor  # the fitness is pickled with every call
        elif workers > 1:
            threads = max(1, torch.get_num_threads() // workers)
            # fork: the workers inherit the fitness (model, cached batches) instead of unpickling it
            self.pool = cf.ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_init_worker,
                initargs=(fitness, threads),
            )
            self.local = self.own = True
        if self.client is not None:
            self.remote = self.client.scatter(fitness, broadcast=True)  # shipped once per worker
            self.width = max(1, sum(self.client.nthreads().values()))
        elif self.pool is not None:
            self.width = int(getattr(self.pool, "_max_workers", workers))
        else:
            self.width = 1

    def run(self, items: Sequence[tuple[int, Transforms]]) -> Iterator[tuple[int, float, float]]:
        """Yield ``(key, fitness, seconds)`` for each ``(key, transforms)`` as it completes."""
        if self.client is not None:
            from distributed import as_completed

            futs = {self.client.submit(timed_call, self.remote, tf, pure=False): k for k, tf in items}
            for fut in as_completed(list(futs)):
                yield (futs[fut], *self._result(fut))
        elif self.pool is not None:
            if self.local:
                futs = {self.pool.submit(_worker_call, tf): k for k, tf in items}
            else:
                futs = {self.pool.submit(timed_call, self.fitness, tf): k for k, tf in items}
            for fut in cf.as_completed(futs):
                yield (futs[fut], *self._result(fut))
        else:
            for k, tf in items:
                yield (k, *timed_call(self.fitness, tf))

    @staticmethod
    def _result(fut: Any) -> tuple[float, float]:
        try:
            return fut.result()
        except Exception as e:  # a worker died or the candidate could not be shipped
            log.warning("candidate skipped (fitness +inf): worker failed: %s: %s", type(e).__name__, first_line(e))
            return math.inf, 0.0

    def close(self) -> None:
        if self.client is not None:
            self.remote.release()
        if self.own and self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        if self.own and self.client is not None:
            self.client.close()

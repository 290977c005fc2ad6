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

import concurrent.futures as cf
import difflib
import hashlib
import logging
import math
import multiprocessing
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcp.engine.cost import CostModel
from lcp.training.data import DataBundle
from lcp.errors import LcpError
from lcp.engine.graph import ChannelGraph
from lcp.io import PathLike, atomic_write_json, atomic_write_text, read_json
from lcp.cut.ranking import Transforms, check_budget, plan
from lcp.engine.surgery import apply_plan
from lcp.training.train import recalibrate_bn

__all__ = ["Fitness", "SearchResult", "group_std", "make_fitness", "search", "write_outputs", "write_search_csv",
           "OPTIMIZERS", "COMPENSATIONS"]

log = logging.getLogger("lcp.methods.legr")

#: Short optimizer names; any exact ``nevergrad.optimizers.registry`` key is accepted too.
OPTIMIZERS: dict[str, str] = {"legr": "legr", "ngopt": "NGOpt", "cma": "CMA", "de": "DE", "pso": "PSO",
                              "oneplusone": "OnePlusOne"}
COMPENSATIONS = ("affine", "additive")
_STATE_FORMAT = "lcp-search-state/1"
_SIGMA_HORIZON = 1.25  # LeGR: step size 1 - i / (1.25 * candidates), i.e. 1 - i/500 for 400 candidates


class FitnessFn(Protocol):
    def __call__(self, transforms: Transforms) -> float: ...


# ---------------------------------------------------------------------------------------------------- fitness


class Fitness:
    """``fitness(transforms) -> float``: held-out loss of the network pruned with ``transforms`` (lower is better).

    Built by :func:`make_fitness`, which caches the data it needs. A candidate whose evaluation raises or gives a
    non-finite value is logged and scores ``+inf``.
    """

    def __init__(self, graph: ChannelGraph, cost: CostModel, scores: np.ndarray, *, budget: float | Sequence[float],
                 budget_type: str, recal: list[Tensor], eval_x: list[Tensor], eval_target: list[Tensor],
                 label_free: bool, tau: int, train: Iterable[tuple[Tensor, Tensor]] | None, lr: float,
                 min_ratio: float, round_to: int, threads: int | None, device: str | torch.device = "cpu"):
        self.graph, self.cost, self.scores = graph, cost, scores
        self.budgets = tuple(float(b) for b in (budget if isinstance(budget, Sequence) else [budget]))
        self.budget, self.budget_type = self.budgets[0], budget_type
        self.device = dev = torch.device(device)  # where candidates run; the batches are moved there once
        self.recal, self.eval_x = [x.to(dev) for x in recal], [x.to(dev) for x in eval_x]
        self.eval_target = [t.to(dev) for t in eval_target]
        self.label_free, self.tau, self.train, self.lr = label_free, tau, train, lr
        self.min_ratio, self.round_to, self.threads = min_ratio, round_to, threads
        self.n_eval = sum(len(x) for x in eval_x)

    def prune(self, transforms: Transforms, budget: float | None = None) -> nn.Module:
        """The physically pruned (not yet recalibrated) network for ``transforms`` at ``budget`` (default: the
        first)."""
        p = plan(self.graph, self.cost, self.scores, budget=budget or self.budget, budget_type=self.budget_type,
                 method="lcp", transforms=transforms, min_ratio=self.min_ratio, round_to=self.round_to)
        return apply_plan(self.graph, p.removed)

    def evaluate(self, transforms: Transforms) -> float:
        """The fitness of ``transforms``; exceptions propagate (``__call__`` turns them into ``+inf``)."""
        return float(np.mean([self.score(self.prune(transforms, b)) for b in self.budgets]))

    def score(self, model: nn.Module) -> float:
        """Held-out loss of a physically pruned network (tau SGD steps and BN recalibration first)."""
        model = model.to(self.device)
        if self.tau > 0:
            self._sgd(model)
        model.eval()
        with torch.inference_mode():
            recalibrate_bn(model, self.recal, batches=len(self.recal))
            total = 0.0
            for x, target in zip(self.eval_x, self.eval_target):
                out = model(x).float()
                if self.label_free:  # target: log-probabilities of the unpruned model
                    total += float(F.kl_div(F.log_softmax(out, 1), target, reduction="sum", log_target=True))
                else:
                    total += float(F.cross_entropy(out, target, reduction="sum"))
        return total / self.n_eval

    def __call__(self, transforms: Transforms) -> float:
        return self._safe(lambda: self.evaluate(transforms))

    def for_removed(self, removed: np.ndarray) -> float:
        """Like ``__call__`` for a given removal mask (``Plan.removed``) instead of transforms."""
        return self._safe(lambda: self.score(apply_plan(self.graph, removed)))

    def _safe(self, fn: Callable[[], float]) -> float:
        threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            value = fn()
        except Exception as e:  # any failure of one candidate must not end the search
            log.warning("candidate skipped (fitness +inf): %s: %s", type(e).__name__, _first_line(e))
            return math.inf
        finally:
            torch.set_num_threads(threads)
        if not math.isfinite(value):
            log.warning("candidate skipped (fitness +inf): the held-out loss is %s", value)
            return math.inf
        return value

    def _sgd(self, model: nn.Module) -> None:
        """LeGR's tau-hat: SGD steps in train mode (BN statistics update as they go)."""
        assert self.train is not None
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        teacher = self.graph.model
        with torch.enable_grad():
            for step, (x, y) in enumerate(self.train):
                if step >= self.tau:
                    break
                if self.label_free:
                    with torch.no_grad():  # the unpruned network stays where the graph has it
                        ref = F.log_softmax(_eval_forward(teacher, x).float(), 1).to(self.device)
                x, y = x.to(self.device), y.to(self.device)
                out = model(x)
                if self.label_free:
                    loss = F.kl_div(F.log_softmax(out.float(), 1), ref, reduction="batchmean", log_target=True)
                else:
                    loss = F.cross_entropy(out, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()


class _Steps:
    """``tau`` training batches, re-iterable and the same for every candidate (epochs continue the order)."""

    def __init__(self, bundle: DataBundle, tau: int, batch_size: int, seed: int):
        self.bundle, self.tau, self.batch_size, self.seed = bundle, tau, batch_size, seed

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n, epoch = 0, 0
        drop = len(self.bundle.train_x) >= self.batch_size
        while n < self.tau:
            loader = self.bundle.loader("train", self.batch_size, shuffle=True, augment=True, seed=self.seed,
                                        epoch=epoch, drop_last=drop)
            if len(loader) == 0:
                return
            for batch in loader:
                yield batch
                n += 1
                if n >= self.tau:
                    return
            epoch += 1


def _eval_forward(model: nn.Module, x: Tensor) -> Tensor:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return model(x)
    finally:
        for m, flag in flags:
            m.training = flag


def make_fitness(graph: ChannelGraph, cost: CostModel, scores: np.ndarray, bundle: DataBundle, *,
                 budget: float | Sequence[float],
                 budget_type: str = "macs", tau: int = 0, label_free: bool = False, recal_batches: int = 4,
                 eval_images: int = 1000, batch_size: int = 128, seed: int = 0, lr: float = 0.01,
                 min_ratio: float = 0.1, round_to: int = 1, threads: int | None = None,
                 device: str | torch.device = "cpu") -> Fitness:
    """The search objective at ``budget`` (lower is better): one budget, or several, whose held-out losses are
    averaged so that one learned compensation serves all of them (learn once, prune many).

    Each candidate: plan with the compensated ranking (``ranking.plan`` method ``lcp``), build the pruned
    network (``surgery.apply_plan``), take ``tau`` SGD steps on augmented training batches (LeGR: lr ``lr``,
    momentum 0.9, weight decay 5e-4, train-mode BN; 0 = none), recalibrate BatchNorm on ``recal_batches``
    training batches of ``batch_size``, then score ``eval_images`` held-out images (never the test split).
    Score: mean cross-entropy, or with ``label_free`` the mean KL divergence KL(p_unpruned || p_pruned) at T=1
    between the unpruned and pruned networks' softmax outputs. KL was chosen over logit MSE because it equals
    the cross-entropy against the unpruned network's soft labels minus a constant, so it is on the scale of
    the labelled fitness and ignores logit shifts that do not change predictions. With ``label_free`` no label
    is ever read (tau steps distil from the unpruned network).

    The recalibration and evaluation batches (and the unpruned network's outputs) are computed once, here.
    ``min_ratio`` and ``round_to`` must match the final cut's. ``threads``: torch threads while a candidate
    runs (one thread was 2-3x faster than two on a 2-core machine shared with other jobs). ``device``: where
    the candidates are scored (``cuda`` needs a single process: no ``workers`` pool).

    Speed (ResNet-56, 2 cores): most of a candidate's time is the forward passes over the
    ``recal_batches * batch_size + eval_images`` images through the physically pruned network, which runs
    ~30% faster than the masked full one; ``apply_plan`` costs 0.05-0.2 s; channels_last was measured 50%
    slower on CPU and BatchNorm folding saves less than the re-tracing costs, so neither is used.
    """
    budgets = list(budget) if isinstance(budget, Sequence) else [budget]
    if not budgets:
        raise LcpError("the search needs at least one budget")
    for b in budgets:
        check_budget(b, budget_type)
    if tau < 0 or recal_batches < 1 or eval_images < 1 or batch_size < 1:
        raise LcpError("tau must be >= 0 and recal_batches, eval_images and batch_size at least 1")
    # fail early (and once) if the budget cannot be met at all
    plan(graph, cost, scores, budget=min(budgets), budget_type=budget_type, method="global", min_ratio=min_ratio,
         round_to=round_to)
    recal = []
    for x, _ in bundle.loader("train", batch_size, shuffle=True, seed=seed):
        if len(recal) == recal_batches:
            break
        recal.append(x)
    held = bundle.loader("holdout", batch_size, limit=eval_images)
    eval_x: list[Tensor] = []
    targets: list[Tensor] = []
    model = graph.model
    with torch.inference_mode():
        for x, y in held:
            eval_x.append(x)
            if label_free:
                targets.append(F.log_softmax(_eval_forward(model, x).float(), 1))
            else:
                if bool((y < 0).any()):
                    raise LcpError("the held-out images are unlabeled: use label_free=True (--label-free)")
                targets.append(y)
    if tau > 0 and not label_free and bool((bundle.train_y < 0).any()):
        raise LcpError("tau > 0 needs labeled training images: use label_free=True (--label-free) or tau=0")
    train = _Steps(bundle, tau, batch_size, seed) if tau > 0 else None
    return Fitness(graph, cost, scores, budget=budgets, budget_type=budget_type, recal=recal, eval_x=eval_x,
                   eval_target=targets, label_free=label_free, tau=tau, train=train, lr=lr, min_ratio=min_ratio,
                   round_to=round_to, threads=threads, device=device)


# ----------------------------------------------------------------------------------------------- candidates


@dataclass
class SearchResult:
    """Best transforms found, their fitness and one history row per evaluated candidate."""

    transforms: Transforms
    best_fitness: float
    history: list[dict[str, float]] = field(default_factory=list)


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


def _transforms(graph: ChannelGraph, z: np.ndarray) -> Transforms:
    n = len(graph.groups)
    return Transforms(np.exp(z[:n]), z[n:].copy(), [g.name for g in graph.groups])


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _timed_call(fitness: FitnessFn, transforms: Transforms) -> tuple[float, float]:
    """(fitness, seconds); a failing or non-finite candidate gives +inf with a logged reason."""
    t0 = time.perf_counter()
    try:
        value = float(fitness(transforms))
    except Exception as e:
        log.warning("candidate skipped (fitness +inf): %s: %s", type(e).__name__, _first_line(e))
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
    return _timed_call(_WORKER_FITNESS, transforms)


class _Evaluator:
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
                self.client = Client("tcp://" + executor[len("dask://"):], timeout="20s")
            except Exception as e:
                raise LcpError(f"cannot reach the Dask scheduler at {executor}: {_first_line(e)}") from None
            self.own = True
        elif executor is not None and type(executor).__module__.startswith("distributed"):
            self.client = executor
        elif executor is not None:
            self.pool = executor  # the fitness is pickled with every call
        elif workers > 1:
            threads = max(1, torch.get_num_threads() // workers)
            # fork: the workers inherit the fitness (model, cached batches) instead of unpickling it
            self.pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                               initializer=_init_worker, initargs=(fitness, threads))
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

            futs = {self.client.submit(_timed_call, self.remote, tf, pure=False): k for k, tf in items}
            for fut in as_completed(list(futs)):
                yield (futs[fut], *self._result(fut))
        elif self.pool is not None:
            if self.local:
                futs = {self.pool.submit(_worker_call, tf): k for k, tf in items}
            else:
                futs = {self.pool.submit(_timed_call, self.fitness, tf): k for k, tf in items}
            for fut in cf.as_completed(futs):
                yield (futs[fut], *self._result(fut))
        else:
            for k, tf in items:
                yield (k, *_timed_call(self.fitness, tf))

    @staticmethod
    def _result(fut: Any) -> tuple[float, float]:
        try:
            return fut.result()
        except Exception as e:  # a worker died or the candidate could not be shipped
            log.warning("candidate skipped (fitness +inf): worker failed: %s: %s", type(e).__name__, _first_line(e))
            return math.inf, 0.0

    def close(self) -> None:
        if self.client is not None:
            self.remote.release()
        if self.own and self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        if self.own and self.client is not None:
            self.client.close()


# ---------------------------------------------------------------------------------------------------- search


class _State:
    """Everything a search needs to continue: written to ``state_path`` after every candidate."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = settings
        self.rng: dict[str, Any] | None = None
        self.pop_z: list[list[float]] = []
        self.pop_f: list[float] = []
        self.queue: list[int] = []  # population slots, oldest first
        self.evaluated: list[dict[str, Any]] = []  # {"z": [...], "fitness": f}
        self.history: list[dict[str, float]] = []
        self.pending: list[list[float]] = []  # generated but not yet told, in candidate order
        self.results: dict[int, list[float]] = {}  # pending index -> [fitness, seconds]

    def to_json(self) -> dict[str, Any]:
        return {"format": _STATE_FORMAT, "settings": self.settings, "rng": self.rng,
                "population": {"z": self.pop_z, "fitness": self.pop_f, "queue": self.queue},
                "evaluated": self.evaluated, "history": self.history, "pending": self.pending,
                "pending_results": {str(k): v for k, v in self.results.items()}}

    @classmethod
    def load(cls, path: Path, settings: dict[str, Any]) -> "_State":
        data = read_json(path, what="search state")
        if not isinstance(data, dict) or data.get("format") != _STATE_FORMAT:
            raise LcpError(f"{path} is not an lcp search state: delete it or start without --resume")
        old = data.get("settings", {})
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            said = ", ".join(f"{k}={old.get(k)!r} (now {settings[k]!r})" for k in diff[:4])
            raise LcpError(f"search state {path} was made with {said}: use the same settings or start without --resume")
        st = cls(settings)
        try:
            st.rng = data["rng"]
            pop = data["population"]
            st.pop_z, st.pop_f, st.queue = pop["z"], [float(f) for f in pop["fitness"]], pop["queue"]
            st.evaluated = [{"z": e["z"], "fitness": float(e["fitness"])} for e in data["evaluated"]]
            st.history = data["history"]
            st.pending = data["pending"]
            st.results = {int(k): [float(v[0]), float(v[1])] for k, v in data["pending_results"].items()}
        except (KeyError, TypeError, ValueError, IndexError):
            raise LcpError(f"search state {path} is incomplete: delete it or start without --resume") from None
        return st


class _Search:
    """Shared machinery of both optimizers: telling results, history, state, progress."""

    def __init__(self, graph: ChannelGraph, state: _State, state_path: Path | None, candidates: int,
                 evaluator: _Evaluator, progress: bool, decode: Callable[[np.ndarray], np.ndarray]):
        from tqdm.auto import tqdm

        self.graph, self.state, self.state_path = graph, state, state_path
        self.candidates, self.evaluator, self.decode = candidates, evaluator, decode
        self.best = min((e["fitness"] for e in state.evaluated), default=math.inf)
        self.bar = tqdm(total=candidates, initial=len(state.evaluated), desc="search", disable=not progress,
                        dynamic_ncols=True, leave=False)
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix(best=f"{self.best:.4f}", refresh=False)

    def save(self) -> None:
        if self.state_path is not None:
            atomic_write_json(self.state_path, self.state.to_json())

    def evaluate_pending(self) -> None:
        """Evaluate the pending candidates that have no result yet, saving the state after each."""
        st = self.state
        todo = [(i, _transforms(self.graph, self.decode(np.asarray(z))))
                for i, z in enumerate(st.pending) if i not in st.results]
        for i, value, seconds in self.evaluator.run(todo):
            st.results[i] = [value, seconds]
            self.save()

    def tell(self, z: Sequence[float], value: float, seconds: float) -> None:
        """Record one evaluated candidate (in candidate order)."""
        st = self.state
        if value < self.best:
            self.best = value
        st.evaluated.append({"z": list(map(float, z)), "fitness": value})
        st.history.append({"candidate": len(st.evaluated), "fitness": value, "best": self.best,
                           "seconds": seconds})
        self._postfix()  # before update(), which redraws the bar
        self.bar.update(1)

    def result(self) -> SearchResult:
        """The best candidate ever evaluated (argmin keeps the first of ties: the identity wins them)."""
        st = self.state
        i = int(np.argmin([e["fitness"] for e in st.evaluated]))
        tf = _transforms(self.graph, self.decode(np.asarray(st.evaluated[i]["z"])))
        return SearchResult(tf, float(st.evaluated[i]["fitness"]), list(st.history))


def _legr(run: _Search, *, n_groups: int, std: np.ndarray, additive: bool, population: int, tournament: int,
          mutate_frac: float, seed: int, seeds: Sequence[np.ndarray] = ()) -> None:
    """LeGR's regularized evolution (see ``search``); the RNG state is saved with each generated batch.

    The initial population is the identity, then ``seeds`` (fixed members), then random members."""
    st, candidates = run.state, run.candidates
    rng = np.random.Generator(np.random.PCG64(seed))
    if st.rng is not None:
        rng.bit_generator.state = st.rng
    n_mut = max(1, int(mutate_frac * n_groups))
    width = run.evaluator.width

    def initial(k: int) -> np.ndarray:
        z = np.zeros(2 * n_groups)
        if 0 < k <= len(seeds):
            z[:] = seeds[k - 1]
        elif k > 0:  # member 0 is the identity (alpha 1, kappa 0)
            if not additive:
                z[:n_groups] = rng.normal(0.0, 1.0, n_groups)  # alpha ~ LogNormal(0, 1)
            z[n_groups:] = rng.normal(0.0, std)
        return z

    def child(k: int) -> np.ndarray:
        sampled = rng.integers(0, len(st.pop_f), size=tournament)  # with replacement
        winner = int(sampled[np.argmin(np.asarray(st.pop_f)[sampled])])
        z = np.asarray(st.pop_z[winner], dtype=np.float64).copy()
        sigma = 1.0 - k / (_SIGMA_HORIZON * candidates)
        for g in np.unique(rng.integers(0, n_groups, size=n_mut)).tolist():  # with replacement, as LeGR
            if not additive:
                z[g] += rng.normal(0.0, sigma)  # alpha *= exp(N(0, sigma^2))
            z[n_groups + g] += rng.normal(0.0, std[g])
        return z

    while len(st.evaluated) < candidates:
        k = len(st.evaluated)
        if not st.pending:
            if k < population:
                st.pending = [initial(k + i).tolist() for i in range(min(width, population - k, candidates - k))]
            else:
                st.pending = [child(k + i).tolist() for i in range(min(width, candidates - k))]
            st.rng = rng.bit_generator.state
        run.evaluate_pending()
        for i, z in enumerate(st.pending):
            value, seconds = st.results[i]
            run.tell(z, value, seconds)
            if len(st.pop_f) < population:
                st.pop_z.append(z)
                st.pop_f.append(value)
                st.queue.append(len(st.pop_f) - 1)
            else:  # aging: the child replaces the oldest member
                slot = st.queue.pop(0)
                st.pop_z[slot], st.pop_f[slot] = z, value
                st.queue.append(slot)
        st.pending, st.results = [], {}
        run.save()


def _nevergrad(run: _Search, name: str, dim: int, seed: int) -> None:
    """A nevergrad optimizer over ``dim`` coordinates, told the identity (all zeros) as its first candidate.

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
        raise LcpError(f"nevergrad optimizer {name} cannot run here: {_first_line(e)}") from None
    opt.suggest(np.zeros(dim))
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
    while k < candidates:
        n = min(width, candidates - k)
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


def _resolve_optimizer(name: str) -> str:
    if name.lower() in OPTIMIZERS:
        return OPTIMIZERS[name.lower()]
    import nevergrad as ng

    if name in ng.optimizers.registry:
        return name
    close = difflib.get_close_matches(name, list(OPTIMIZERS) + sorted(ng.optimizers.registry), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise LcpError(f"unknown optimizer {name!r}{hint}; choose one of {', '.join(OPTIMIZERS)} "
                   "or any nevergrad registry name")


def search(graph: ChannelGraph, scores: np.ndarray, fitness: FitnessFn, *, optimizer: str = "legr",
           compensation: str = "affine", candidates: int = 400, population: int = 64, tournament: int = 16,
           mutate_frac: float = 0.1, seed: int = 0, state_path: PathLike | None = None, resume: bool = False,
           progress: bool = True, workers: int = 1, executor: Any = None,
           standardized_member: bool = True) -> SearchResult:
    """Minimise ``fitness`` over per-group ``(alpha, kappa)``; the identity is always the first candidate.

    ``optimizer``: ``legr`` (LeGR's regularized evolution: ``population`` members, the identity and random
    ones with alpha ~ LogNormal(0, 1) and kappa ~ N(0, std_g), plus, with ``standardized_member``, the
    compensation that gives every group the same score mean and std (:func:`standardized`, a near-uniform
    ranking) as the second member; then each child mutates the winner of a
    ``tournament`` drawn with replacement in ``mutate_frac`` of the groups, alpha times exp(N(0, s^2)) with s
    decaying as 1 - i / (1.25 candidates) and kappa plus N(0, std_g^2), and replaces the oldest member), or a
    nevergrad optimizer (``ngopt``, ``cma``, ``de``, ``pso``, ``oneplusone`` or any registry name).
    ``compensation="additive"`` is LcP's kappa-only form (alpha stays 1). The result is the best candidate ever
    evaluated (ties keep the earlier one, so it is never worse than the identity on this fitness).

    ``state_path``: the state is written there atomically after every candidate; ``resume=True`` continues
    from it, losing no evaluation, and ends with the same transforms as an uninterrupted run with the same
    settings. ``workers > 1`` (local processes) or ``executor`` (a dask ``Client``, ``"dask://HOST:PORT"`` or a
    ``concurrent.futures`` executor) evaluate candidates concurrently in batches of the pool's width: legr
    breeds a batch of children from the population as it stands, and every batch is told in candidate order,
    so results depend on the seed and the width, not on timing.
    """
    if compensation not in COMPENSATIONS:
        raise LcpError(f"unknown compensation {compensation!r}; choose one of {', '.join(COMPENSATIONS)}")
    if candidates < 1 or population < 1 or tournament < 1 or workers < 1 or not 0 < mutate_frac <= 1:
        raise LcpError("candidates, population, tournament and workers must be at least 1, mutate_frac in (0, 1]")
    name = _resolve_optimizer(optimizer)
    n = len(graph.groups)
    if n == 0:
        raise LcpError("nothing to search: the model has no prunable channel groups")
    if len(scores) != len(graph.units):
        raise LcpError(f"scores has {len(scores)} entries, the graph has {len(graph.units)} units")
    std = group_std(graph, scores)
    additive = compensation == "additive"
    fingerprint = hashlib.sha256(np.nan_to_num(np.asarray(scores, dtype=np.float64)).tobytes()).hexdigest()[:16]
    settings = {"optimizer": name, "compensation": compensation, "candidates": candidates, "seed": seed,
                "groups": [g.name for g in graph.groups], "scores": fingerprint}
    if name == "legr":
        settings.update(population=population, tournament=tournament, mutate_frac=mutate_frac,
                        standardized_member=standardized_member)

        def decode(z: np.ndarray) -> np.ndarray:
            return z
    else:
        def decode(z: np.ndarray) -> np.ndarray:  # optimizer space -> [log alpha, kappa]
            if additive:
                return np.concatenate([np.zeros(n), z * std])
            return np.concatenate([z[:n], z[n:] * std])

    path = Path(state_path) if state_path is not None else None
    state = _State.load(path, settings) if (resume and path is not None and path.is_file()) else _State(settings)
    evaluator = _Evaluator(fitness, workers, executor)
    run = _Search(graph, state, path, candidates, evaluator, progress, decode)
    try:
        if name == "legr":
            _legr(run, n_groups=n, std=std, additive=additive, population=population, tournament=tournament,
                  mutate_frac=mutate_frac, seed=seed,
                  seeds=[standardized(graph, scores, additive)] if standardized_member else [])
        else:
            _nevergrad(run, name, n if additive else 2 * n, seed)
    finally:
        evaluator.close()
        run.bar.close()
    return run.result()


# --------------------------------------------------------------------------------------------------- outputs


def write_search_csv(history: Sequence[dict[str, float]], path: PathLike) -> None:
    """``candidate,fitness,best,seconds`` per evaluated candidate, written atomically."""
    lines = ["candidate,fitness,best,seconds"]
    for h in history:
        lines.append(f"{int(h['candidate'])},{h['fitness']!r},{h['best']!r},{h['seconds']:.3f}")
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_outputs(result: SearchResult, out_dir: PathLike) -> None:
    """``search.csv`` and ``search.png`` (fitness per candidate and best so far) in ``out_dir``."""
    from lcp.report import plot_search

    out = Path(out_dir)
    write_search_csv(result.history, out / "search.csv")
    plot_search(result.history, out / "search.png", title="search: held-out fitness (lower is better)",
                maximize=False)

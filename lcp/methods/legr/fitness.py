"""The search objective: held-out loss of the network pruned with a candidate compensation (lower is better)."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcp.cut.ranking import Plan, check_budget, plan
from lcp.cut.transforms import Transforms
from lcp.engine.cost import CostModel
from lcp.engine.graph import ChannelGraph
from lcp.engine.surgery import apply_plan
from lcp.errors import LcpError, first_line
from lcp.methods.base import Context
from lcp.training.data import DataBundle
from lcp.training.evaluate import fold_bn, prefers_channels_last
from lcp.training.train import recalibrate_bn

log = logging.getLogger("lcp.methods.legr")


class FitnessFn(Protocol):
    def __call__(self, transforms: Transforms) -> float: ...


# ---------------------------------------------------------------------------------------------------- fitness


class Fitness:
    """``fitness(transforms) -> float``: held-out loss of the network pruned with ``transforms`` (lower is better).

    Built by :func:`make_fitness`, which caches the data it needs. A candidate whose evaluation raises or gives a
    non-finite value is logged and scores ``+inf``.
    """

    def __init__(
        self,
        graph: ChannelGraph,
        cost: CostModel,
        scores: np.ndarray,
        *,
        budget: float | Sequence[float],
        budget_type: str,
        recal: list[Tensor],
        eval_x: list[Tensor],
        eval_target: list[Tensor],
        label_free: bool,
        tau: int,
        train: Iterable[tuple[Tensor, Tensor]] | None,
        lr: float,
        min_ratio: float,
        round_to: int,
        threads: int | None,
        device: str | torch.device = "cpu",
        time_aware: bool = False,
    ):
        self.graph, self.cost, self.scores = graph, cost, scores
        self.time_aware = time_aware
        self.budgets = tuple(float(b) for b in (budget if isinstance(budget, Sequence) else [budget]))
        self.budget, self.budget_type = self.budgets[0], budget_type
        self.device = dev = torch.device(device)  # where candidates run; the batches are moved there once
        self.channels_last = prefers_channels_last(dev, graph.model, [*recal, *eval_x])
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.recal = [x.to(dev).contiguous(memory_format=fmt) for x in recal]
        self.eval_x = [x.to(dev).contiguous(memory_format=fmt) for x in eval_x]
        self.eval_target = [t.to(dev) for t in eval_target]
        self.label_free, self.tau, self.train, self.lr = label_free, tau, train, lr
        self.min_ratio, self.round_to, self.threads = min_ratio, round_to, threads
        self.n_eval = sum(len(x) for x in eval_x)

    def prune(self, transforms: Transforms, budget: float | None = None) -> nn.Module:
        """The physically pruned (not yet recalibrated) network for ``transforms`` at ``budget`` (default: the
        first)."""
        return apply_plan(self.graph, self._plan(transforms, budget or self.budget).removed)

    def key(self, transforms: Transforms) -> str:
        """A digest of the cuts ``transforms`` make at every budget: candidates with equal keys score the same."""
        h = hashlib.sha256()
        for b in self.budgets:
            h.update(np.packbits(self._plan(transforms, b).removed).tobytes())
        return h.hexdigest()

    def _plan(self, transforms: Transforms, budget: float) -> Plan:
        return plan(
            self.graph,
            self.cost,
            self.scores,
            budget=budget,
            budget_type=self.budget_type,
            method="lcp",
            transforms=transforms,
            min_ratio=self.min_ratio,
            round_to=self.round_to,
            time_aware=self.time_aware,
        )

    def evaluate(self, transforms: Transforms) -> float:
        """The fitness of ``transforms``; exceptions propagate (``__call__`` turns them into ``+inf``)."""
        return float(np.mean([self.score(self.prune(transforms, b)) for b in self.budgets]))

    def score(self, model: nn.Module) -> float:
        """Held-out loss of a physically pruned network (tau SGD steps and BN recalibration first)."""
        model = (
            model.to(self.device, memory_format=torch.channels_last) if self.channels_last else model.to(self.device)
        )
        if self.tau > 0:
            self._sgd(model)
        model.eval()
        with torch.no_grad():
            recalibrate_bn(model, self.recal, batches=len(self.recal))
            model = fold_bn(model)
        with torch.inference_mode():
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
            log.warning("candidate skipped (fitness +inf): %s: %s", type(e).__name__, first_line(e))
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
            loader = self.bundle.loader(
                "train", self.batch_size, shuffle=True, augment=True, seed=self.seed, epoch=epoch, drop_last=drop
            )
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


def make_fitness(
    graph: ChannelGraph,
    cost: CostModel,
    scores: np.ndarray,
    bundle: DataBundle,
    *,
    budget: float | Sequence[float],
    budget_type: str = "macs",
    tau: int = 0,
    label_free: bool = False,
    recal_batches: int = 4,
    eval_images: int = 1000,
    batch_size: int = 128,
    seed: int = 0,
    lr: float = 0.01,
    min_ratio: float = 0.1,
    round_to: int = 1,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    time_aware: bool = False,
) -> Fitness:
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
    ``min_ratio``, ``round_to`` and ``time_aware`` (latency budgets) must match the final cut's. ``threads``:
    torch threads while a candidate runs (one thread was 2-3x faster than two on a 2-core machine shared with
    other jobs). ``device``: where the candidates are scored (``cuda`` needs a single process: no ``workers``
    pool).

    Speed (ResNet-56, 2 cores): most of a candidate's time is the forward passes over the
    ``recal_batches * batch_size + eval_images`` images through the physically pruned network, which runs
    ~30% faster than the masked full one; ``apply_plan`` costs 0.05-0.2 s. On CPU the candidates run
    channels-last with BatchNorm folded into the convs after recalibration (MobileNetV2's sensitivity
    measurement: 90 s -> 50-58 s); on CUDA contiguous (channels-last was many times slower there, above).
    """
    budgets = list(budget) if isinstance(budget, Sequence) else [budget]
    if not budgets:
        raise LcpError("the search needs at least one budget")
    for b in budgets:
        check_budget(b, budget_type)
    if tau < 0 or recal_batches < 1 or eval_images < 1 or batch_size < 1:
        raise LcpError("tau must be >= 0 and recal_batches, eval_images and batch_size at least 1")
    # fail early (and once) if the budget cannot be met at all
    plan(
        graph,
        cost,
        scores,
        budget=min(budgets),
        budget_type=budget_type,
        method="global",
        min_ratio=min_ratio,
        round_to=round_to,
    )
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
    return Fitness(
        graph,
        cost,
        scores,
        budget=budgets,
        budget_type=budget_type,
        recal=recal,
        eval_x=eval_x,
        eval_target=targets,
        label_free=label_free,
        tau=tau,
        train=train,
        lr=lr,
        min_ratio=min_ratio,
        round_to=round_to,
        threads=threads,
        device=device,
        time_aware=time_aware,
    )


def fitness_for(ctx: Context, budget: float | Sequence[float], *, label_free: bool, **overrides: Any) -> Fitness:
    """``make_fitness`` with a method context's graph, cost, scores, data and options (the lcp search and the
    DDPG agents score their candidates the same way); ``overrides``: other ``make_fitness`` keywords
    (``eval_images``, ``recal_batches``, ``batch_size``)."""
    o = ctx.options
    cost, scores = ctx.cost_and_scores()
    return make_fitness(
        ctx.graph,
        cost,
        scores,
        ctx.data,
        budget=budget,
        budget_type=o.budget_type,
        tau=o.tau,
        label_free=label_free,
        seed=o.seed,
        min_ratio=o.min_ratio,
        round_to=o.round_to,
        device=o.device,
        time_aware=o.time_aware and o.budget_type == "latency",
        **overrides,
    )

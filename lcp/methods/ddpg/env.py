"""The agent's environment: per-group keep ratios, their cost, the budget walls; a toy reward with a known optimum."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lcp.engine.cost import CostModel, record_cost
from lcp.engine.graph import ChannelGraph
from lcp.engine.types import LayerKind
from lcp.errors import LcpError

log = logging.getLogger("lcp.methods.ddpg")

STATE_FORMAT = "lcp-agent-state/2"
N_FEATURES = 8


@dataclass
class AgentConfig:
    """DDPG hyperparameters (AMC's published values unless docs/agents.md says otherwise)."""

    episodes: int = 200  # episodes in all, the starting profiles and the warm-up included
    warmup: int = 50  # random-action episodes before the actor learns (AMC: 100 of 400-800)
    warmup_sigma: float = 0.2  # warm-up actions: truncated normal around the best starting profile (if any)
    top: int = 5  # the best episodes kept for re-scoring (``search_ratios``' final fitness)
    hidden: int = 300
    lr_actor: float = 1e-4
    lr_critic: float = 1e-3
    tau: float = 0.01  # soft target update
    discount: float = 0.0  # AMC: 1.0 (every transition already gets the episode's reward; see docs)
    batch_size: int = 64
    memory_per_group: int = 100  # replay capacity = this x number of groups (AMC: rmsize 100 per layer)
    sigma: float = 0.5  # truncated-normal exploration, times sigma_decay per episode after warm-up
    sigma_decay: float = 0.95
    moving_alpha: float = 0.5  # reward baseline: ma += alpha * (batch mean - ma)
    reward_std: bool = True  # also divide r - ma by the std of the rewards in memory
    wall_weight: float = 10.0  # actor loss: weight of the squared distance of mu(s) outside the walls of s
    critic_warmup: bool = True  # train the critic (not the actor) during the warm-up episodes

    def check(self) -> None:
        if self.episodes < 1 or self.warmup < 0 or self.hidden < 1 or self.batch_size < 1:
            raise LcpError("episodes must be at least 1, warm-up episodes 0 or more")
        if not (0 <= self.discount <= 1) or self.wall_weight < 0 or self.warmup_sigma <= 0 or self.top < 1:
            raise LcpError("discount must be in [0, 1], wall_weight >= 0, warmup_sigma > 0 and top >= 1")


@dataclass
class AgentResult:
    """Best keep ratios found (one per group), their reward and one history row per episode."""

    ratios: np.ndarray
    best_reward: float
    history: list[dict] = field(default_factory=list)
    #: the best episodes, best first: ``{"reward", "ratios", "episode"}`` (at most ``AgentConfig.top``)
    top: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------- environment


class RatioCost:
    """Cost of a keep-ratio vector with fractional channel counts (the walls' fast, continuous cost model).

    Kept positions of record r on an axis are ``const + sum_g count[r, g] * ratio[g]``; each record's cost is
    ``cost.record_cost`` of those counts, so ``RatioCost(ones)`` is the baseline exactly.
    """

    def __init__(self, graph: ChannelGraph, cost: CostModel, metric: str):
        n_rec, n_grp = len(graph.records), len(graph.groups)
        self.graph, self.cost, self.metric = graph, cost, metric
        self.const = {"out": np.zeros(n_rec), "in": np.zeros(n_rec)}
        self.count = {"out": np.zeros((n_rec, n_grp)), "in": np.zeros((n_rec, n_grp))}
        for u in graph.units:
            for ri, axis, cnt in u.members:
                if u.prunable and u.group >= 0:
                    self.count[axis][ri, u.group] += cnt
                else:
                    self.const[axis][ri] += cnt
        const = cost.macs_const if metric == "macs" else cost.params_const
        self.fixed = float(const)
        self.base = float(cost.base(metric))

    def __call__(self, ratios: np.ndarray) -> float:
        r = np.asarray(ratios, dtype=np.float64)
        n_out = self.const["out"] + self.count["out"] @ r
        n_in = self.const["in"] + self.count["in"] @ r
        k = 0 if self.metric == "macs" else 1
        total = self.fixed
        for rec, o, i, n in zip(self.graph.records, n_out.tolist(), n_in.tolist(), self.cost.norm_params):
            total += record_cost(rec, o, i, n)[k]
        return total


class Env:
    """Group-by-group episodes: states, AMC action walls and the ratios of the episode so far."""

    def __init__(self, graph: ChannelGraph, cost: CostModel, *, budget: float, budget_type: str, min_ratio: float):
        self.graph, self.budget = graph, budget
        self.n = len(graph.groups)
        self.rc = RatioCost(graph, cost, budget_type)
        self.target = budget * self.rc.base
        size = np.array([len(g.units) for g in graph.groups], dtype=np.float64)
        self.floor = graph.floors(min_ratio) / size  # graph floors (and caps) as ratios
        self.low = self.floor.copy()  # the floors the walls use: 1 for the groups kept whole
        ones = np.ones(self.n)
        self.share = (
            np.array([self.rc.base - self.rc(np.where(np.arange(self.n) == g, 0.0, ones)) for g in range(self.n)])
            / self.rc.base
        )  # cost that depends on group g
        recs = {r.name: r for r in graph.records}
        kind = np.array(
            [
                np.mean(
                    [
                        0.0 if recs[p].kind == LayerKind.LINEAR else 0.5 if recs[p].mode == "depthwise" else 1.0
                        for p in g.producers
                    ]
                )
                for g in graph.groups
            ]
        )
        kernel = np.array([np.mean([recs[p].kernel for p in g.producers]) for g in graph.groups], dtype=np.float64)
        static = np.stack([np.arange(self.n, dtype=np.float64), kind, size, kernel, self.share], 1)
        span = static.max(0) - static.min(0)
        self.static = np.where(span > 0, (static - static.min(0)) / np.where(span > 0, span, 1.0), 0.0)
        self.rest = np.array([self.share[t + 1 :].sum() for t in range(self.n)])
        self.rest = self.rest / max(self.share.sum(), 1e-12)

    def keep_whole(self, whole: np.ndarray) -> None:
        """Take the groups of mask ``whole`` out of the action space: their walls become [1, 1]."""
        self.low = np.where(whole, 1.0, self.floor)

    @property
    def whole(self) -> np.ndarray:
        return self.low >= 1.0

    def uniform(self, whole: np.ndarray | None = None) -> np.ndarray | None:
        """One keep ratio for every group (the ``whole`` groups at 1, every group at least its floor) with
        cost = budget, or None where the budget cannot be met with those groups whole."""
        whole = np.zeros(self.n, dtype=bool) if whole is None else np.asarray(whole, dtype=bool)

        def ratios(x: float) -> np.ndarray:
            return np.where(whole, 1.0, np.clip(np.full(self.n, x), self.floor, 1.0))

        if self.rc(ratios(0.0)) > self.target * (1 + 1e-9):
            return None
        return ratios(_bisect(lambda x: self.rc(ratios(x)) <= self.target, 0.0, 1.0, want_max=True))

    def state(self, t: int, ratios: np.ndarray) -> np.ndarray:
        """Features of group t: index, type, channels, kernel, cost share (min-max over groups), cost reduced
        so far (groups before t at their ratios, the rest unpruned), cost share of the groups after t,
        previous action."""
        r = np.ones(self.n)
        r[:t] = ratios[:t]
        reduced = 1.0 - self.rc(r) / self.rc.base
        prev = float(ratios[t - 1]) if t > 0 else 1.0
        return np.concatenate([self.static[t], [reduced, self.rest[t], prev]]).astype(np.float32)

    def wall(self, t: int, ratios: np.ndarray, action: float) -> float:
        """Clip ``action`` into the walls of group t (:meth:`bounds`)."""
        return float(np.clip(action, *self.bounds(t, ratios)))

    def bounds(self, t: int, ratios: np.ndarray) -> tuple[float, float]:
        """Walls [lo, hi] within [floor_t, 1]: hi keeps the budget reachable with the later groups at their
        floors, lo keeps it reachable (from above) with the later groups unpruned (lo = hi if they cross)."""

        def cost(x: float, rest: np.ndarray) -> float:
            r = np.concatenate([ratios[:t], [x], rest])
            return self.rc(r)

        floors, ones = self.low[t + 1 :], np.ones(self.n - t - 1)
        hi = _bisect(lambda x: cost(x, floors) <= self.target, self.low[t], 1.0, want_max=True)
        lo = _bisect(lambda x: cost(x, ones) >= self.target, self.low[t], 1.0, want_max=False)
        return min(lo, hi), hi


def _bisect(ok: Callable[[float], bool], a: float, b: float, *, want_max: bool, steps: int = 30) -> float:
    """Largest (``want_max``) or smallest x in [a, b] with ok(x), for a monotone predicate (a or b if none)."""
    if want_max:
        if ok(b):
            return b
        if not ok(a):
            return a
        lo, hi = a, b  # ok(lo), not ok(hi)
        for _ in range(steps):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        return lo
    if ok(a):
        return a
    if not ok(b):
        return b
    lo, hi = a, b  # not ok(lo), ok(hi)
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def quadratic_toy(env: Env, seed: int = 0) -> tuple[np.ndarray, Callable[[np.ndarray], float]]:
    """A cheap reward with a known optimum, to check that the agent learns: (target, reward) with reward(r) =
    -sum((r - target)^2) and target a seeded random profile scaled onto the budget, so the walls can reach it
    (best reward 0)."""
    shape = np.random.default_rng(seed).uniform(0.2, 1.0, env.n)
    f = _bisect(lambda x: env.rc(np.clip(x * shape, env.low, 1.0)) <= env.target, 0.0, 1.0 / shape.min(), want_max=True)
    target = np.clip(f * shape, env.low, 1.0)
    return target, lambda ratios: -float(((np.asarray(ratios) - target) ** 2).sum())

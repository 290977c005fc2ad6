"""A DDPG agent that sets the keep ratio of every channel group: methods ``amc`` and ``lfgcl``.

AMC (He et al., ECCV 2018): an episode walks the channel groups in graph order; at group t the actor maps an
8-feature state to a keep ratio, exploration adds truncated-normal noise, and the action is clipped so that the
budget stays reachable with the remaining groups at their floors (upper wall) or unpruned (lower wall). At the
episode's end the ratios are turned into a plan (``ranking.plan_ratios``: the highest-scored units of each
group, scaled to the budget), the network is pruned physically, BatchNorm recalibrated and the held-out loss
measured (``search.Fitness``); the reward ``-loss`` is given to every transition of the episode. ``amc`` uses
the labelled cross-entropy, ``lfgcl`` (LFGCL, Liu et al. 2021) the label-free KL divergence to the unpruned
network. See docs/agents.md for the state, the walls and the hyperparameters (known vs chosen).

The whole agent (networks, optimizers, replay memory, RNG, best ratios, history) is checkpointed after every
episode into one safetensors file whose metadata holds the JSON state; ``resume`` continues it exactly.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from lcp.engine.cost import CostModel, record_cost
from lcp.errors import LcpError
from lcp.engine.graph import ChannelGraph
from lcp.engine.types import LayerKind, floor_keep
from lcp.io import PathLike, atomic_write_text, load_tensor_metadata, load_tensors, save_tensors
from lcp.cut.ranking import AGENT_METHODS, Plan, plan_ratios

__all__ = ["AGENT_METHODS", "AgentConfig", "AgentResult", "RatioCost", "search_ratios", "run_agent",
           "quadratic_toy", "write_agent_csv"]

log = logging.getLogger("lcp.methods.ddpg")

_STATE_FORMAT = "lcp-agent-state/2"
N_FEATURES = 8


@dataclass
class AgentConfig:
    """DDPG hyperparameters (AMC's published values unless docs/agents.md says otherwise)."""

    episodes: int = 30  # episodes in all, warm-up included (about 5 min on ResNet-56, 2 busy cores)
    warmup: int = 10  # random-action episodes before the actor learns (AMC: 100 of 400-800)
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
        if not (0 <= self.discount <= 1) or self.wall_weight < 0:
            raise LcpError("discount must be in [0, 1] and wall_weight >= 0")


@dataclass
class AgentResult:
    """Best keep ratios found (one per group), their reward and one history row per episode."""

    ratios: np.ndarray
    best_reward: float
    history: list[dict] = field(default_factory=list)


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
        self.low = np.array([floor_keep(int(s), min_ratio) for s in size]) / size  # graph floors as ratios
        ones = np.ones(self.n)
        self.share = np.array([self.rc.base - self.rc(np.where(np.arange(self.n) == g, 0.0, ones))
                               for g in range(self.n)]) / self.rc.base  # cost that depends on group g
        recs = {r.name: r for r in graph.records}
        kind = np.array([np.mean([0.0 if recs[p].kind == LayerKind.LINEAR else 0.5 if recs[p].mode == "depthwise"
                                  else 1.0 for p in g.producers]) for g in graph.groups])
        kernel = np.array([np.mean([recs[p].kernel for p in g.producers]) for g in graph.groups], dtype=np.float64)
        static = np.stack([np.arange(self.n, dtype=np.float64), kind, size, kernel, self.share], 1)
        span = static.max(0) - static.min(0)
        self.static = np.where(span > 0, (static - static.min(0)) / np.where(span > 0, span, 1.0), 0.0)
        self.rest = np.array([self.share[t + 1:].sum() for t in range(self.n)])
        self.rest = self.rest / max(self.share.sum(), 1e-12)

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

        floors, ones = self.low[t + 1:], np.ones(self.n - t - 1)
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


# ------------------------------------------------------------------------------------------------------- DDPG


class Actor(nn.Module):
    def __init__(self, n_in: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(n_in, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)
        _init(self.fc1, self.fc2, self.fc3)

    def forward(self, s: Tensor) -> Tensor:
        return torch.sigmoid(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(s))))))


class Critic(nn.Module):
    def __init__(self, n_in: int, hidden: int):
        super().__init__()
        self.fc11, self.fc12 = nn.Linear(n_in, hidden), nn.Linear(1, hidden)
        self.fc2, self.fc3 = nn.Linear(hidden, hidden), nn.Linear(hidden, 1)
        _init(self.fc11, self.fc2, self.fc3, self.fc12)

    def forward(self, s: Tensor, a: Tensor) -> Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc11(s) + self.fc12(a)))))


def _init(*layers: nn.Linear, last_w: float = 3e-3) -> None:
    """AMC/DDPG init: fan-in uniform for hidden layers, U(-3e-3, 3e-3) for the output layer (layers[2])."""
    with torch.no_grad():
        for i, m in enumerate(layers):
            bound = last_w if i == 2 else 1.0 / math.sqrt(m.weight.shape[1])
            m.weight.uniform_(-bound, bound)


class DDPG:
    """Actor, critic, their targets, Adam optimizers, the replay memory and the reward baseline."""

    def __init__(self, n_groups: int, cfg: AgentConfig, seed: int):
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor, self.critic = Actor(N_FEATURES, cfg.hidden), Critic(N_FEATURES, cfg.hidden)
        self.actor_t, self.critic_t = Actor(N_FEATURES, cfg.hidden), Critic(N_FEATURES, cfg.hidden)
        self.actor_t.load_state_dict(self.actor.state_dict())
        self.critic_t.load_state_dict(self.critic.state_dict())
        self.opt_a = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr_actor)
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr_critic)
        cap = cfg.memory_per_group * n_groups
        self.mem = {"s": torch.zeros(cap, N_FEATURES), "a": torch.zeros(cap, 1), "r": torch.zeros(cap, 1),
                    "s2": torch.zeros(cap, N_FEATURES), "done": torch.zeros(cap, 1),
                    "lo": torch.zeros(cap, 1), "hi": torch.ones(cap, 1)}
        self.size, self.ptr = 0, 0
        self.moving: float | None = None

    def act(self, s: np.ndarray) -> float:
        with torch.no_grad():
            return float(self.actor(torch.from_numpy(s)[None])[0, 0])

    def remember(self, s: np.ndarray, a: float, r: float, s2: np.ndarray, done: bool,
                 walls: tuple[float, float]) -> None:
        cap = len(self.mem["a"])
        i = self.ptr
        self.mem["s"][i] = torch.from_numpy(s)
        self.mem["a"][i, 0], self.mem["r"][i, 0], self.mem["done"][i, 0] = a, r, float(done)
        self.mem["s2"][i] = torch.from_numpy(s2)
        self.mem["lo"][i, 0], self.mem["hi"][i, 0] = walls
        self.ptr, self.size = (i + 1) % cap, min(self.size + 1, cap)

    def update(self, rng: np.random.Generator, actor: bool = True) -> None:
        """One update on a replay batch: the critic to (r - baseline) / std + discount * Q'(s', mu'(s')), then
        (``actor``) the actor to maximise Q(s, mu(s)) minus ``wall_weight`` x its squared distance outside the
        walls [lo, hi] of s."""
        cfg = self.cfg
        idx = torch.from_numpy(rng.integers(0, self.size, size=cfg.batch_size))
        s, a, r, s2, done, lo, hi = (self.mem[k][idx] for k in ("s", "a", "r", "s2", "done", "lo", "hi"))
        mean = float(r.mean())
        self.moving = mean if self.moving is None else self.moving + cfg.moving_alpha * (mean - self.moving)
        r = r - self.moving
        if cfg.reward_std and self.size > 1:
            r = r / max(float(self.mem["r"][:self.size].std()), 1e-8)
        with torch.no_grad():
            target = r + cfg.discount * (1.0 - done) * self.critic_t(s2, self.actor_t(s2)) if cfg.discount else r
        loss_c = nn.functional.mse_loss(self.critic(s, a), target)
        self.opt_c.zero_grad(set_to_none=True)
        loss_c.backward()
        self.opt_c.step()
        if actor:
            mu = self.actor(s)
            outside = torch.relu(lo - mu) + torch.relu(mu - hi)
            loss_a = -self.critic(s, mu).mean() + cfg.wall_weight * (outside ** 2).mean()
            self.opt_a.zero_grad(set_to_none=True)
            loss_a.backward()
            self.opt_a.step()
        with torch.no_grad():
            for net, tgt in ((self.actor, self.actor_t), (self.critic, self.critic_t)):
                for p, q in zip(net.parameters(), tgt.parameters()):
                    q.mul_(1.0 - cfg.tau).add_(p, alpha=cfg.tau)

    # ------------------------------------------------------------------------------------------- state
    def tensors(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for name in ("actor", "critic", "actor_t", "critic_t"):
            for k, v in getattr(self, name).state_dict().items():
                out[f"{name}.{k}"] = v
        for name in ("opt_a", "opt_c"):
            for i, st in getattr(self, name).state_dict()["state"].items():
                for k, v in st.items():
                    out[f"{name}.{i}.{k}"] = torch.as_tensor(v)
        for k, v in self.mem.items():
            out[f"mem.{k}"] = v
        return out

    def load(self, t: dict[str, Tensor]) -> None:
        for name in ("actor", "critic", "actor_t", "critic_t"):
            net = getattr(self, name)
            net.load_state_dict({k: t[f"{name}.{k}"] for k in net.state_dict()})
        for name in ("opt_a", "opt_c"):
            opt = getattr(self, name)
            sd = opt.state_dict()
            n = len(sd["param_groups"][0]["params"])
            state = {}
            for i in range(n):
                keys = [k for k in t if k.startswith(f"{name}.{i}.")]
                if keys:
                    state[i] = {k.split(".", 2)[2]: t[k].clone() for k in keys}
            sd["state"] = state
            opt.load_state_dict(sd)
        for k in self.mem:
            self.mem[k] = t[f"mem.{k}"].clone()


def _truncated_normal(rng: np.random.Generator, mu: float, sigma: float, lo: float = 0.0, hi: float = 1.0) -> float:
    """N(mu, sigma^2) restricted to [lo, hi] by rejection (AMC samples scipy's truncnorm on the same bounds)."""
    for _ in range(1000):
        x = rng.normal(mu, sigma)
        if lo <= x <= hi:
            return float(x)
    return float(np.clip(mu, lo, hi))


# ------------------------------------------------------------------------------------------------------- search


def run_agent(env: Env, reward_of: Callable[[np.ndarray], float], cfg: AgentConfig, *, seed: int = 0,
              state_path: PathLike | None = None, resume: bool = False, progress: bool = True,
              settings: dict | None = None) -> AgentResult:
    """Run ``cfg.episodes`` episodes; ``reward_of(ratios)`` scores one episode's ratios (higher is better).

    The state is saved atomically to ``state_path`` after every episode; ``resume`` continues from it and ends
    with the same ratios as an uninterrupted run (an interrupted episode is re-run).
    """
    from tqdm.auto import tqdm

    cfg.check()
    n = env.n
    settings = {"format": _STATE_FORMAT, "seed": seed, "agent": asdict(cfg), **(settings or {})}
    agent = DDPG(n, cfg, seed)
    rng = np.random.Generator(np.random.PCG64(seed))
    history: list[dict] = []
    best = {"reward": -math.inf, "ratios": np.ones(n).tolist()}
    path = Path(state_path) if state_path is not None else None
    if resume and path is not None and path.is_file():
        meta = load_tensor_metadata(path)
        try:
            st = json.loads(meta["state"])
            old = st["settings"]
        except (KeyError, ValueError):
            raise LcpError(f"agent state {path} is not lcp agent state: delete it or start without --resume") from None
        diff = [k for k in set(settings) | set(old) if old.get(k) != settings.get(k)]
        if diff:
            raise LcpError(f"agent state {path} was made with other settings ({', '.join(sorted(diff)[:4])}): "
                           "use the same settings or start without --resume")
        agent.load(load_tensors(path))
        agent.size, agent.ptr, agent.moving = st["size"], st["ptr"], st["moving"]
        rng.bit_generator.state = st["rng"]
        history, best = st["history"], st["best"]

    def save() -> None:
        if path is None:
            return
        st = {"settings": settings, "size": agent.size, "ptr": agent.ptr, "moving": agent.moving,
              "rng": rng.bit_generator.state, "history": history, "best": best}
        save_tensors(agent.tensors(), path, metadata={"state": json.dumps(st)})

    bar = tqdm(total=cfg.episodes, initial=len(history), desc="agent", disable=not progress, dynamic_ncols=True,
               leave=False)
    worst = min((h["reward"] for h in history), default=0.0)
    try:
        for episode in range(len(history), cfg.episodes):
            t0 = time.perf_counter()
            sigma = cfg.sigma * cfg.sigma_decay ** max(0, episode - cfg.warmup)
            ratios = np.ones(n)
            states, actions, walls = [], [], []
            for t in range(n):
                s = env.state(t, ratios)
                if episode < cfg.warmup:
                    a = float(rng.uniform(0.0, 1.0))
                else:
                    a = _truncated_normal(rng, agent.act(s), sigma)
                walls.append(env.bounds(t, ratios))
                ratios[t] = float(np.clip(a, *walls[t]))
                states.append(s)
                actions.append(float(ratios[t]))  # the action applied (after the walls) is what Q learns
            reward = float(reward_of(ratios.copy()))
            if not math.isfinite(reward):  # a failed evaluation: below the worst reward seen
                log.warning("episode %d: evaluation failed, reward set below the worst so far", episode)
                reward = worst - 1.0
            worst = min(worst, reward)
            for t in range(n):
                s2 = states[t + 1] if t + 1 < n else states[t]
                agent.remember(states[t], actions[t], reward, s2, t == n - 1, walls[t])
            if episode >= cfg.warmup or cfg.critic_warmup:
                for _ in range(n):  # AMC: one update per transition of the episode
                    agent.update(rng, actor=episode >= cfg.warmup)
            if reward > best["reward"]:
                best = {"reward": reward, "ratios": ratios.tolist(), "episode": episode + 1}
            history.append({"episode": episode + 1, "reward": reward, "best": best["reward"],
                            "ratio_mean": float(ratios.mean()), "ratio_min": float(ratios.min()),
                            "ratio_max": float(ratios.max()), "cost": env.rc(ratios) / env.rc.base,
                            "sigma": sigma if episode >= cfg.warmup else None,
                            "seconds": time.perf_counter() - t0})
            save()
            bar.set_postfix(best=f"{best['reward']:.4f}", refresh=False)
            bar.update(1)
    finally:
        bar.close()
    return AgentResult(np.asarray(best["ratios"], dtype=np.float64), float(best["reward"]), history)


def search_ratios(graph: ChannelGraph, cost: CostModel, scores: np.ndarray, fitness: "Fitness", *,  # noqa: F821
                  budget: float, budget_type: str = "macs", min_ratio: float = 0.1, round_to: int = 1,
                  cfg: AgentConfig | None = None, seed: int = 0, state_path: PathLike | None = None,
                  resume: bool = False, progress: bool = True) -> AgentResult:
    """Learn per-group keep ratios at ``budget`` whose pruned network minimises ``fitness`` (reward = -fitness).

    ``fitness`` is a ``search.Fitness`` (``make_fitness``; ``label_free=True`` for LFGCL). Each episode's
    ratios become a plan by :func:`ranking.plan_ratios` and are scored with ``fitness.for_removed``.
    """
    if budget_type not in ("macs", "params"):
        raise LcpError(f"the agent methods ({', '.join(AGENT_METHODS)}) take a macs or params budget, "
                       f"not {budget_type}")
    if not graph.groups:
        raise LcpError("nothing to search: the model has no prunable channel groups")
    cfg = cfg or AgentConfig()
    env = Env(graph, cost, budget=budget, budget_type=budget_type, min_ratio=min_ratio)

    def reward_of(ratios: np.ndarray) -> float:
        p = to_plan(ratios)
        return -fitness.for_removed(p.removed)

    def to_plan(ratios: np.ndarray) -> Plan:
        return plan_ratios(graph, cost, scores, ratios, budget=budget, budget_type=budget_type,
                           min_ratio=min_ratio, round_to=round_to)

    fingerprint = hashlib.sha256(np.nan_to_num(np.asarray(scores, dtype=np.float64)).tobytes()).hexdigest()[:16]
    settings = {"groups": [g.name for g in graph.groups], "scores": fingerprint, "budget": budget,
                "budget_type": budget_type, "label_free": bool(getattr(fitness, "label_free", False))}
    return run_agent(env, reward_of, cfg, seed=seed, state_path=state_path, resume=resume, progress=progress,
                     settings=settings)


def quadratic_toy(env: Env, seed: int = 0) -> tuple[np.ndarray, Callable[[np.ndarray], float]]:
    """A cheap reward with a known optimum, to check that the agent learns: (target, reward) with reward(r) =
    -sum((r - target)^2) and target a seeded random profile scaled onto the budget, so the walls can reach it
    (best reward 0)."""
    shape = np.random.default_rng(seed).uniform(0.2, 1.0, env.n)
    f = _bisect(lambda x: env.rc(np.clip(x * shape, env.low, 1.0)) <= env.target, 0.0, 1.0 / shape.min(),
                want_max=True)
    target = np.clip(f * shape, env.low, 1.0)
    return target, lambda ratios: -float(((np.asarray(ratios) - target) ** 2).sum())


def write_agent_csv(history: list[dict], path: PathLike) -> None:
    """``episode,reward,best,ratio_mean,ratio_min,ratio_max,cost,sigma,seconds`` per episode, atomically."""
    cols = ("episode", "reward", "best", "ratio_mean", "ratio_min", "ratio_max", "cost", "sigma", "seconds")
    lines = [",".join(cols)]
    for h in history:
        vals = [h.get(c) for c in cols]
        lines.append(",".join("" if v is None else (str(v) if c == "episode" else f"{v:.6g}")
                              for c, v in zip(cols, vals)))
    atomic_write_text(path, "\n".join(lines) + "\n")

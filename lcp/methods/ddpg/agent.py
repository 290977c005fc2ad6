"""DDPG (AMC's actor-critic) and the episode loop, checkpointed after every episode."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lcp.errors import LcpError
from lcp.io import PathLike, load_tensor_metadata, load_tensors, save_tensors
from lcp.methods.ddpg.env import N_FEATURES, STATE_FORMAT, AgentConfig, AgentResult, Env

log = logging.getLogger("lcp.methods.ddpg")


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
        self.mem = {
            "s": torch.zeros(cap, N_FEATURES),
            "a": torch.zeros(cap, 1),
            "r": torch.zeros(cap, 1),
            "s2": torch.zeros(cap, N_FEATURES),
            "done": torch.zeros(cap, 1),
            "lo": torch.zeros(cap, 1),
            "hi": torch.ones(cap, 1),
        }
        self.size, self.ptr = 0, 0
        self.moving: float | None = None

    def act(self, s: np.ndarray) -> float:
        with torch.no_grad():
            return float(self.actor(torch.from_numpy(s)[None])[0, 0])

    def remember(
        self, s: np.ndarray, a: float, r: float, s2: np.ndarray, done: bool, walls: tuple[float, float]
    ) -> None:
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
            r = r / max(float(self.mem["r"][: self.size].std()), 1e-8)
        with torch.no_grad():
            target = r + cfg.discount * (1.0 - done) * self.critic_t(s2, self.actor_t(s2)) if cfg.discount else r
        loss_c = nn.functional.mse_loss(self.critic(s, a), target)
        self.opt_c.zero_grad(set_to_none=True)
        loss_c.backward()
        self.opt_c.step()
        if actor:
            mu = self.actor(s)
            outside = torch.relu(lo - mu) + torch.relu(mu - hi)
            loss_a = -self.critic(s, mu).mean() + cfg.wall_weight * (outside**2).mean()
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


def run_agent(
    env: Env,
    reward_of: Callable[[np.ndarray], float],
    cfg: AgentConfig,
    *,
    seed: int = 0,
    state_path: PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    settings: dict | None = None,
    starts: Sequence[tuple[str, np.ndarray, np.ndarray]] = (),
    plan_of: Callable[[np.ndarray], Hashable] | None = None,
) -> AgentResult:
    """Run ``cfg.episodes`` episodes; ``reward_of(ratios)`` scores one episode's ratios (higher is better).

    ``plan_of(ratios)``: what the ratios become (e.g. the bytes of a plan's removal mask); the best episodes kept
    for re-scoring (``cfg.top``) are then of distinct plans, each its best episode (aligned widths map many
    ratios to one plan, whose copies would fill the list).

    ``starts``: (label, ratios, whole) starting profiles, evaluated first, one episode each (e.g. the uniform
    cut, so the agent can never end below it). The best of them decides the action space (its ``whole``
    groups stay at 1 from then on) and centres the warm-up: actions drawn from a truncated normal
    (``cfg.warmup_sigma``) around its ratios instead of U(0, 1).

    The state is saved atomically to ``state_path`` after every episode; ``resume`` continues from it and ends
    with the same ratios as an uninterrupted run (an interrupted episode is re-run).
    """
    from tqdm.auto import tqdm

    cfg.check()
    n = env.n
    settings = {"format": STATE_FORMAT, "seed": seed, "agent": asdict(cfg), **(settings or {})}
    agent = DDPG(n, cfg, seed)
    rng = np.random.Generator(np.random.PCG64(seed))
    history: list[dict] = []
    best = {"reward": -math.inf, "ratios": np.ones(n).tolist()}
    path = Path(state_path) if state_path is not None else None
    if resume and path is not None and path.is_file():
        meta = load_tensor_metadata(path)
        try:
            st = json.loads(meta["state"])
            old = dict(st["settings"])
        except (KeyError, TypeError, ValueError):
            raise LcpError(f"agent state {path} is not lcp agent state: delete it or start without --resume") from None
        diff = [k for k in set(settings) | set(old) if old.get(k) != settings.get(k)]
        if diff:
            raise LcpError(
                f"agent state {path} was made with other settings ({', '.join(sorted(diff)[:4])}): "
                "use the same settings or start without --resume"
            )
        try:
            agent.load(load_tensors(path))
            agent.size, agent.ptr, agent.moving = st["size"], st["ptr"], st["moving"]
            rng.bit_generator.state = st["rng"]
            history, best = list(st["history"]), dict(st["best"])
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError):
            raise LcpError(f"agent state {path} is incomplete: delete it or start without --resume") from None

    def save() -> None:
        if path is None:
            return
        st = {
            "settings": settings,
            "size": agent.size,
            "ptr": agent.ptr,
            "moving": agent.moving,
            "rng": rng.bit_generator.state,
            "history": history,
            "best": best,
        }
        save_tensors(agent.tensors(), path, metadata={"state": json.dumps(st)})

    bar = tqdm(
        total=cfg.episodes, initial=len(history), desc="agent", disable=not progress, dynamic_ncols=True, leave=False
    )
    worst = min((h["reward"] for h in history), default=math.inf)  # the same with or without a resume
    n_starts = len(starts)
    if cfg.episodes <= n_starts + cfg.warmup:
        log.warning(
            "%d episodes, %d of them starting cuts and %d warm-up: no episode is the agent's own (more episodes or "
            "fewer warm-up episodes)",
            cfg.episodes,
            n_starts,
            cfg.warmup,
        )
    center: np.ndarray | None = None
    whole = np.zeros(n, dtype=bool)

    def choose_start() -> tuple[np.ndarray, np.ndarray]:
        """The best starting profile (by its episode's reward): its whole groups leave the action space, its
        ratios centre the warm-up."""
        i = int(np.argmax([h["reward"] for h in history[:n_starts]]))
        env.keep_whole(starts[i][2])
        return np.asarray(starts[i][1], dtype=np.float64), np.asarray(starts[i][2], dtype=bool)

    if n_starts and len(history) >= n_starts:
        center, whole = choose_start()
    try:
        for episode in range(len(history), cfg.episodes):
            t0 = time.perf_counter()
            start = starts[episode] if episode < n_starts else None
            learning = episode >= n_starts + cfg.warmup
            sigma = cfg.sigma * cfg.sigma_decay ** max(0, episode - n_starts - cfg.warmup)
            ratios = np.ones(n)
            states, actions, walls = [], [], []
            for t in range(n):
                if start is None and whole[t]:  # out of the action space: no transition
                    ratios[t] = 1.0
                    continue
                s = env.state(t, ratios)
                bounds = env.bounds(t, ratios)
                if start is not None:
                    a = float(start[1][t])
                elif not learning:
                    a = (
                        float(rng.uniform(0.0, 1.0))
                        if center is None
                        else _truncated_normal(rng, float(center[t]), cfg.warmup_sigma)
                    )
                else:
                    a = _truncated_normal(rng, agent.act(s), sigma)
                ratios[t] = float(np.clip(a, *bounds))
                states.append(s)
                walls.append(bounds)
                actions.append(float(ratios[t]))  # the action applied (after the walls) is what Q learns
            reward = float(reward_of(ratios.copy()))
            if not math.isfinite(reward):  # a failed evaluation: below the worst reward seen
                log.warning("episode %d: evaluation failed, reward set below the worst so far", episode)
                reward = (worst if math.isfinite(worst) else 0.0) - 1.0
            worst = min(worst, reward)
            for i in range(len(states)):
                s2 = states[i + 1] if i + 1 < len(states) else states[i]
                agent.remember(states[i], actions[i], reward, s2, i == len(states) - 1, walls[i])
            if agent.size and (learning or cfg.critic_warmup):
                for _ in range(len(states)):  # AMC: one update per transition of the episode
                    agent.update(rng, actor=learning)
            if reward > best["reward"]:
                best = {**best, "reward": reward, "ratios": ratios.tolist(), "episode": episode + 1}
            entry = {"reward": reward, "ratios": ratios.tolist(), "episode": episode + 1}
            top = sorted([*best.get("top", []), entry], key=lambda e: (-e["reward"], e["episode"]))
            if plan_of is not None:  # one entry per plan: its best episode (the earliest of equals)
                kept: dict[Hashable, dict] = {}
                for e in top:
                    kept.setdefault(plan_of(np.asarray(e["ratios"], dtype=np.float64)), e)
                top = list(kept.values())
            best["top"] = top[: cfg.top]
            history.append(
                {
                    "episode": episode + 1,
                    "reward": reward,
                    "best": best["reward"],
                    "ratio_mean": float(ratios.mean()),
                    "ratio_min": float(ratios.min()),
                    "ratio_max": float(ratios.max()),
                    "cost": env.rc(ratios) / env.rc.base,
                    "sigma": sigma if learning else None,
                    "seconds": time.perf_counter() - t0,
                    "phase": start[0] if start is not None else "agent" if learning else "warm-up",
                }
            )
            if n_starts and episode + 1 == n_starts:
                center, whole = choose_start()
            save()
            bar.set_postfix(best=f"{best['reward']:.4f}", refresh=False)
            bar.update(1)
    finally:
        bar.close()
    top = [{**e, "ratios": np.asarray(e["ratios"], dtype=np.float64)} for e in best.get("top", [])]
    return AgentResult(np.asarray(best["ratios"], dtype=np.float64), float(best["reward"]), history, top)

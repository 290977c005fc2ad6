"""The registered methods ``lfgcl`` and ``amc``: a DDPG agent sets the keep ratio of every channel group.

AMC (He et al., ECCV 2018): an episode walks the channel groups in graph order; at group t the actor maps an
8-feature state to a keep ratio, exploration adds truncated-normal noise, and the action is clipped so that the
budget stays reachable with the remaining groups at their floors (upper wall) or unpruned (lower wall). At the
episode's end the ratios are turned into a plan (``ranking.plan_ratios``: the highest-scored units of each
group, scaled to the budget), the network is pruned physically, BatchNorm recalibrated and the held-out loss
measured (``lcp.methods.legr.fitness.Fitness``); the reward ``-loss`` is given to every transition of the
episode. ``amc`` uses the labelled cross-entropy, ``lfgcl`` (LFGCL, Liu et al. 2021) the label-free KL
divergence to the unpruned network. See docs/agents.md for the state, the walls and the hyperparameters
(known vs chosen).

The whole agent (networks, optimizers, replay memory, RNG, best ratios, history) is checkpointed after every
episode into one safetensors file whose metadata holds the JSON state; ``resume`` continues it exactly.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from lcp.cut.pruner import PruneResult
from lcp.cut.ranking import Plan, plan_ratios
from lcp.engine.cost import CostModel
from lcp.engine.graph import ChannelGraph
from lcp.errors import LcpError
from lcp.io import PathLike, atomic_write_json, atomic_write_text
from lcp.methods.base import Context, Learned, Method, register_method
from lcp.methods.ddpg.agent import run_agent
from lcp.methods.ddpg.env import AgentConfig, AgentResult, Env
from lcp.methods.legr.fitness import Fitness, fitness_for
from lcp.methods.legr.prior import stream_groups
from lcp.methods.options import episodes_for
from lcp.report import plot_search

AGENT_METHODS = ("lfgcl", "amc")


def search_ratios(
    graph: ChannelGraph,
    cost: CostModel,
    scores: np.ndarray,
    fitness: Fitness,
    *,
    budget: float,
    budget_type: str = "macs",
    min_ratio: float = 0.1,
    round_to: int = 1,
    cfg: AgentConfig | None = None,
    seed: int = 0,
    state_path: PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    final: Fitness | None = None,
) -> AgentResult:
    """Learn per-group keep ratios at ``budget`` whose pruned network minimises ``fitness`` (reward = -fitness).

    ``fitness`` is a ``lcp.methods.legr.fitness.Fitness`` (``make_fitness``; ``label_free=True`` for LFGCL). Each
    episode's ratios become a plan by :func:`ranking.plan_ratios` and are scored with ``fitness.for_removed``. The first
    episodes are the uniform cut and, where the model has residual streams, the uniform cut of every other
    group with the streams kept whole (:func:`run_agent`'s ``starts``). ``final``: a fitness on more images
    that re-scores the best episodes and the starts at the end (the best of many noisy scores is optimistic);
    the result is the best by it, its reward ``-final``.
    """
    if budget_type not in ("macs", "params"):
        raise LcpError(
            f"the agent methods ({', '.join(AGENT_METHODS)}) take a macs or params budget, not {budget_type}"
        )
    if not graph.groups:
        raise LcpError("nothing to search: the model has no prunable channel groups")
    cfg = cfg or AgentConfig()
    env = Env(graph, cost, budget=budget, budget_type=budget_type, min_ratio=min_ratio)

    def to_plan(ratios: np.ndarray) -> Plan:
        return plan_ratios(
            graph, cost, scores, ratios, budget=budget, budget_type=budget_type, min_ratio=min_ratio, round_to=round_to
        )

    starts = []
    if (uniform := env.uniform()) is not None:
        starts.append(("uniform", uniform, np.zeros(env.n, dtype=bool)))
    streams = stream_groups(graph)
    if streams.any() and (kept := env.uniform(streams)) is not None:
        starts.append(("uniform streams whole", kept, streams))
    fingerprint = hashlib.sha256(np.nan_to_num(np.asarray(scores, dtype=np.float64)).tobytes()).hexdigest()[:16]
    settings = {
        "groups": [g.name for g in graph.groups],
        "scores": fingerprint,
        "budget": budget,
        "budget_type": budget_type,
        "label_free": bool(getattr(fitness, "label_free", False)),
        "starts": [label for label, _, _ in starts],
    }
    rewards: dict[bytes, float] = {}  # per plan: aligned widths map many episodes' ratios to one plan

    def plan_of(ratios: np.ndarray) -> bytes:
        return np.packbits(to_plan(ratios).removed).tobytes()

    def reward_of(ratios: np.ndarray) -> float:
        removed = to_plan(ratios).removed
        key = np.packbits(removed).tobytes()
        if key in rewards:
            return rewards[key]
        reward = -fitness.for_removed(removed)
        if math.isfinite(reward):  # a failed evaluation (e.g. out of memory) is tried again by a later episode
            rewards[key] = reward
        return reward

    result = run_agent(
        env,
        reward_of,
        cfg,
        seed=seed,
        state_path=state_path,
        resume=resume,
        progress=progress,
        settings=settings,
        starts=starts,
        plan_of=plan_of if round_to > 1 else None,  # any width: two episodes rarely make one plan
    )
    if final is None:
        return result
    candidates = {e["episode"]: e["ratios"] for e in result.top}
    for i, (_, ratios, _) in enumerate(starts):
        candidates.setdefault(i + 1, np.asarray(ratios, dtype=np.float64))
    distinct: dict[bytes, tuple[int, np.ndarray]] = {}  # a start whose plan an episode made is scored once
    for ep, r in sorted(candidates.items()):
        distinct.setdefault(plan_of(r), (ep, r))
    rescored = [
        {"episode": ep, "reward": -final.for_removed(to_plan(r).removed), "ratios": r} for ep, r in distinct.values()
    ]
    rescored.sort(key=lambda e: -e["reward"])
    result.ratios, result.best_reward, result.top = rescored[0]["ratios"], rescored[0]["reward"], rescored
    return result


#: the fitness of an episode: few held-out images (hundreds of episodes must fit in minutes); the best
#: episodes are re-scored on the search's full fitness (``make_fitness``' defaults) at the end
EPISODE_FITNESS = {"eval_images": 256, "recal_batches": 1, "batch_size": 128}


def write_agent_csv(history: list[dict], path: PathLike) -> None:
    """``episode,phase,reward,best,ratio_mean,ratio_min,ratio_max,cost,sigma,seconds`` per episode, atomically."""
    cols = ("episode", "phase", "reward", "best", "ratio_mean", "ratio_min", "ratio_max", "cost", "sigma", "seconds")
    lines = [",".join(cols)]
    for h in history:
        vals = [h.get(c) for c in cols]
        lines.append(
            ",".join(
                "" if v is None else (str(v) if c in ("episode", "phase") else f"{v:.6g}") for c, v in zip(cols, vals)
            )
        )
    atomic_write_text(path, "\n".join(lines) + "\n")


class _AgentMethod(Method):
    """Keep ratios per group learned by the DDPG agent, one search per budget (or once at ``--search-budget``);
    each budget's cut keeps the highest-scored units of each group by its ratios, scaled to the budget."""

    label_free: ClassVar[bool] = False
    budget_types = ("macs", "params")
    signature_options = ("episodes", "warmup_episodes")
    learns_from_data = True
    reads = frozenset({"episodes", "warmup_episodes", "search_budget", "tau"})
    removes_blocks = False  # ratios above the floor / connections: no residual branch is emptied
    ranks_by_time = False

    def check(self, options: Any, budgets: list[float | None]) -> None:
        if self.name == "amc" and options.label_free:
            raise LcpError(
                "method amc rewards minus the held-out cross-entropy (labels); use --method lfgcl for the label-free "
                "reward"
            )
        super().check(options, budgets)

    def learn(self, ctx: Context) -> Learned:
        o, graph = ctx.options, ctx.graph
        ctx.need_data(self.name)
        cost, scores = ctx.cost_and_scores()
        budgets = [o.search_budget] if o.search_budget else sorted(set(o.all_budgets()))
        write = ctx.writer and ctx.out is not None
        # lfgcl and amc draw different exploration from the same --seed (their episodes would coincide otherwise)
        seed = int(np.random.SeedSequence([o.seed, int(self.label_free)]).generate_state(1)[0])
        per_budget: dict[float, np.ndarray] = {}
        episodes = episodes_for(self.name, o.episodes)
        summary = []
        for budget in budgets:
            tag = "" if len(budgets) == 1 else f"_{budget:g}"
            ctx.log(
                f"learning keep ratios per group at {budget:g} of {o.budget_type}: {self.name} agent, "
                f"{episodes} episodes ({o.warmup_episodes} warm-up), reward "
                f"{'-KL to the unpruned outputs' if self.label_free else '-CE'} on "
                f"{EPISODE_FITNESS['eval_images']} held-out images"
            )
            result = search_ratios(
                graph,
                cost,
                scores,
                fitness_for(ctx, budget, label_free=self.label_free, **EPISODE_FITNESS),
                budget=budget,
                budget_type=o.budget_type,
                min_ratio=o.min_ratio,
                round_to=o.round_to,
                cfg=AgentConfig(episodes=episodes, warmup=o.warmup_episodes),
                seed=seed,
                state_path=ctx.out / f"agent_state{tag}.safetensors" if write else None,
                resume=o.resume,
                progress=o.progress,
                final=fitness_for(ctx, budget, label_free=self.label_free),
            )
            per_budget[budget] = result.ratios
            best = result.top[0]
            phase = result.history[best["episode"] - 1].get("phase", "") if result.history else ""
            ctx.log(f"at {budget:g}: best episode {best['episode']} ({phase}), re-scored reward {best['reward']:.4f}")
            summary.append(
                {
                    "budget": budget,
                    "reward": result.best_reward,
                    "episode": best["episode"],
                    "phase": phase,
                    "rescored": [{"episode": e["episode"], "reward": e["reward"]} for e in result.top],
                    "groups": [{"group": g.name, "ratio": float(r)} for g, r in zip(graph.groups, result.ratios)],
                }
            )
            if write:
                write_agent_csv(result.history, ctx.out / f"agent{tag}.csv")
                plot_search(
                    result.history,
                    ctx.out / f"agent{tag}.png",
                    title=f"{self.name} at {budget:g} of {o.budget_type}: reward per episode (higher is better)",
                    key="reward",
                    xlabel="episode",
                )
        if write:
            atomic_write_json(ctx.out / "ratios.json", summary[0] if len(summary) == 1 else {"budgets": summary})
        return Learned(ratios=per_budget[budgets[0]], ratios_by_budget=per_budget)

    def cut(self, ctx: Context, learned: Learned, budget: float) -> PruneResult:
        """Cut with the ratios learned at ``budget`` (those of ``--search-budget`` when it was given)."""
        ratios = (learned.ratios_by_budget or {}).get(budget, learned.ratios)
        return super().cut(ctx, replace(learned, ratios=ratios), budget)


@register_method
class LfgclMethod(_AgentMethod):
    name = "lfgcl"
    summary = "keep ratio per layer from a DDPG agent, label-free KL reward"
    label_free = True
    reads = _AgentMethod.reads | {"label_free"}  # always label-free: --label-free is welcome, not needed


@register_method
class AmcMethod(_AgentMethod):
    name = "amc"
    summary = "keep ratio per layer from a DDPG agent, cross-entropy reward"

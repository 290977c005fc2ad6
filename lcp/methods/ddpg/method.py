"""The registered methods ``lfgcl`` and ``amc``: a DDPG agent sets the keep ratio of every channel group.

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
from typing import Any, ClassVar

import numpy as np

from lcp.cut.ranking import Plan, plan_ratios
from lcp.engine.cost import CostModel
from lcp.engine.graph import ChannelGraph
from lcp.errors import LcpError
from lcp.io import PathLike, atomic_write_json, atomic_write_text
from lcp.methods.base import Context, Learned, Method, register_method
from lcp.methods.ddpg.agent import run_agent
from lcp.methods.ddpg.env import AgentConfig, AgentResult, Env
from lcp.methods.legr.fitness import Fitness, fitness_for

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
) -> AgentResult:
    """Learn per-group keep ratios at ``budget`` whose pruned network minimises ``fitness`` (reward = -fitness).

    ``fitness`` is a ``search.Fitness`` (``make_fitness``; ``label_free=True`` for LFGCL). Each episode's
    ratios become a plan by :func:`ranking.plan_ratios` and are scored with ``fitness.for_removed``.
    """
    if budget_type not in ("macs", "params"):
        raise LcpError(
            f"the agent methods ({', '.join(AGENT_METHODS)}) take a macs or params budget, not {budget_type}"
        )
    if not graph.groups:
        raise LcpError("nothing to search: the model has no prunable channel groups")
    cfg = cfg or AgentConfig()
    env = Env(graph, cost, budget=budget, budget_type=budget_type, min_ratio=min_ratio)

    def reward_of(ratios: np.ndarray) -> float:
        p = to_plan(ratios)
        return -fitness.for_removed(p.removed)

    def to_plan(ratios: np.ndarray) -> Plan:
        return plan_ratios(
            graph, cost, scores, ratios, budget=budget, budget_type=budget_type, min_ratio=min_ratio, round_to=round_to
        )

    fingerprint = hashlib.sha256(np.nan_to_num(np.asarray(scores, dtype=np.float64)).tobytes()).hexdigest()[:16]
    settings = {
        "groups": [g.name for g in graph.groups],
        "scores": fingerprint,
        "budget": budget,
        "budget_type": budget_type,
        "label_free": bool(getattr(fitness, "label_free", False)),
    }
    return run_agent(
        env, reward_of, cfg, seed=seed, state_path=state_path, resume=resume, progress=progress, settings=settings
    )


def write_agent_csv(history: list[dict], path: PathLike) -> None:
    """``episode,reward,best,ratio_mean,ratio_min,ratio_max,cost,sigma,seconds`` per episode, atomically."""
    cols = ("episode", "reward", "best", "ratio_mean", "ratio_min", "ratio_max", "cost", "sigma", "seconds")
    lines = [",".join(cols)]
    for h in history:
        vals = [h.get(c) for c in cols]
        lines.append(
            ",".join("" if v is None else (str(v) if c == "episode" else f"{v:.6g}") for c, v in zip(cols, vals))
        )
    atomic_write_text(path, "\n".join(lines) + "\n")


class _AgentMethod(Method):
    """Keep ratios per group learned by the DDPG agent at the search budget; each budget's cut keeps the
    highest-scored units of each group by those ratios, scaled to the budget."""

    label_free: ClassVar[bool] = False
    budget_types = ("macs", "params")
    signature_options = ("episodes", "warmup_episodes")
    learns_from_data = True

    def check(self, options: Any, budgets: list[float | None]) -> None:
        super().check(options, budgets)
        if self.name == "amc" and options.label_free:
            raise LcpError(
                "method amc rewards held-out accuracy (labels); use --method lfgcl for the label-free reward"
            )

    def learn(self, ctx: Context) -> Learned:
        o, graph = ctx.options, ctx.graph
        ctx.need_data(self.name)
        cost, scores = ctx.cost_and_scores()
        budget = o.search_budget or min(o.all_budgets())
        ctx.log(
            f"learning keep ratios per group: {self.name} agent, {o.episodes} episodes ({o.warmup_episodes} "
            f"warm-up) at {budget:g} of {o.budget_type}, reward "
            f"{'-KL to the unpruned outputs' if self.label_free else '-CE'}"
        )
        fitness = fitness_for(ctx, budget, label_free=self.label_free)
        write = ctx.writer and ctx.out is not None
        result = search_ratios(
            graph,
            cost,
            scores,
            fitness,
            budget=budget,
            budget_type=o.budget_type,
            min_ratio=o.min_ratio,
            round_to=o.round_to,
            cfg=AgentConfig(episodes=o.episodes, warmup=o.warmup_episodes),
            seed=o.seed,
            state_path=ctx.out / "agent_state.safetensors" if write else None,
            resume=o.resume,
            progress=o.progress,
        )
        if write:
            write_agent_csv(result.history, ctx.out / "agent.csv")
            atomic_write_json(
                ctx.out / "ratios.json",
                {
                    "reward": result.best_reward,
                    "groups": [{"group": g.name, "ratio": float(r)} for g, r in zip(graph.groups, result.ratios)],
                },
            )
        return Learned(ratios=result.ratios)


@register_method
class LfgclMethod(_AgentMethod):
    name = "lfgcl"
    summary = "keep ratio per layer from a DDPG agent, label-free KL reward"
    label_free = True


@register_method
class AmcMethod(_AgentMethod):
    name = "amc"
    summary = "keep ratio per layer from a DDPG agent, cross-entropy reward"

"""How far aligned widths (``--round-to``) move the keep ratios the DDPG agent asks for (lfgcl, amc).

The agent's walls and ratios assume any width; ``ranking.plan_ratios`` turns each episode's ratios into a plan.
For ResNet-20 and ResNet-56 (random weights, seed 0, l2 scores) this prints, at ``--round-to`` 1 and 16:
the mean |kept - asked| per group over 40 random walled ratio profiles (as the warm-up draws them) at 0.5 of
the MACs (beside the same for the aligned widths nearest the asked ratios, the least any plan can be off),
and what the "streams whole" starting cut keeps of the residual streams at 0.5 and 0.3.

    python benchmarks/agent_rounding.py
"""

from __future__ import annotations

import numpy as np
import torch

import lcp
from lcp.cut import importance as imp
from lcp.cut.aligned_ratios import nearest_widths
from lcp.cut.alignment import group_alignment
from lcp.cut.ranking import plan_ratios
from lcp.engine.cost import CostModel
from lcp.engine.graph import build_graph
from lcp.methods.ddpg import Env
from lcp.methods.legr.prior import stream_groups


def kept_fraction(graph, removed: np.ndarray) -> np.ndarray:
    return np.array([(~removed[np.asarray(g.units)]).mean() for g in graph.groups])


def main() -> None:
    torch.set_num_threads(1)
    for name in ("resnet20", "resnet56"):
        torch.manual_seed(0)
        graph = build_graph(lcp.create_model(name, num_classes=10).eval(), torch.zeros(1, 3, 32, 32))
        cost = CostModel(graph)
        scores = imp.unit_scores(graph, imp.filter_scores(graph, "l2"), "mean")
        streams, sizes = stream_groups(graph), np.array([len(g.units) for g in graph.groups])
        env, rng = Env(graph, cost, budget=0.5, budget_type="macs", min_ratio=0.1), np.random.default_rng(0)
        profiles = []
        for _ in range(40):
            r = np.ones(env.n)
            for t in range(env.n):
                r[t] = env.wall(t, r, float(rng.uniform()))
            profiles.append(r)
        for rt in (1, 16):
            off = [
                np.abs(
                    kept_fraction(graph, plan_ratios(graph, cost, scores, r, budget=0.5, round_to=rt).removed) - r
                ).mean()
                for r in profiles
            ]
            align, floors = group_alignment(sizes, rt), graph.floors(0.1, 2)
            nearest = np.mean([np.abs(nearest_widths(r, sizes, align, floors) / sizes - r).mean() for r in profiles])
            print(
                f"{name} round_to={rt:2d}: mean |kept - asked| per group, 40 random episodes at 0.5: {np.mean(off):.3f}"
                f" (the nearest aligned widths, budget aside: {nearest:.3f})"
            )
        for budget in (0.5, 0.3):
            env = Env(graph, cost, budget=budget, budget_type="macs", min_ratio=0.1)
            uniform, whole = env.uniform(), env.uniform(streams)
            for rt in (1, 16):
                pu = plan_ratios(graph, cost, scores, uniform, budget=budget, round_to=rt).removed
                ps = plan_ratios(graph, cost, scores, whole, budget=budget, round_to=rt).removed
                kept = np.rint(kept_fraction(graph, ps) * sizes).astype(int)
                print(
                    f"{name} at {budget} round_to={rt:2d}: the streams-whole start keeps streams "
                    f"{kept[streams].tolist()} of {sizes[streams].tolist()}; same plan as the uniform start: "
                    f"{np.array_equal(pu, ps)}"
                )


if __name__ == "__main__":
    main()

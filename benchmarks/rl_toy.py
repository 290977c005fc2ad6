"""Do the RL agents learn? Toy rewards with a known optimum, no network evaluation (seconds per run, CPU).

``ddpg``: the lfgcl/amc agent on ResNet-8 (6 groups; ``--model resnet56``: 30 groups) at ``--budget`` of MACs,
reward ``agents.quadratic_toy`` (best 0). ``controller``: the ads controller on a tiny DenseNet (30 connections;
``--model densenet40``: 273) at ``--budget``, reward ``controllers.match_toy`` (best 1). Per seed it prints the
mean reward of the first and of the last ``--k`` episodes; ``--set name=value`` overrides a config field
(e.g. the published AMC/ENAS settings, docs/agents.md and docs/connections.md).

    python benchmarks/rl_toy.py ddpg --episodes 200 --seeds 0-9
    python benchmarks/rl_toy.py ddpg --episodes 200 --seeds 0-4 --scale 0.01 --set reward_std=false
    python benchmarks/rl_toy.py ddpg --episodes 200 --seeds 0-9 --set discount=1 --set reward_std=false \\
        --set wall_weight=0 --set critic_warmup=false
    python benchmarks/rl_toy.py controller --episodes 400 --seeds 0-9
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from lcp.engine.connections import build
from lcp.engine.cost import CostModel
from lcp.engine.graph import build_graph
from lcp.methods.connections import ControllerConfig, match_toy, search_connections
from lcp.methods.ddpg import AgentConfig, Env, quadratic_toy, run_agent
from lcp.models.zoo import CifarDenseNet, CifarResNet, densenet40


def seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("agent", choices=["ddpg", "controller"])
    ap.add_argument("--model", help="resnet8 | resnet56 (ddpg), tiny | densenet40 (controller)")
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10, help="ddpg warm-up episodes")
    ap.add_argument("--budget", type=float)
    ap.add_argument("--seeds", type=seeds, default=seeds("0-4"), help="e.g. 0-9")
    ap.add_argument("--k", type=int, default=50, help="episodes averaged at the start and at the end")
    ap.add_argument("--scale", type=float, default=1.0, help="ddpg: multiply the reward (printed unscaled)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="config override (JSON value)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    over = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    torch.manual_seed(0)
    if args.agent == "ddpg":
        model = args.model or "resnet8"
        net = CifarResNet({"resnet8": 1, "resnet56": 9}[model]).eval()
        graph = build_graph(net, torch.zeros(1, 3, 16, 16))
        env = Env(graph, CostModel(graph), budget=args.budget or 0.5, budget_type="macs", min_ratio=0.1)
        cfg = AgentConfig(**{"episodes": args.episodes, "warmup": args.warmup, **over})

        def run(seed: int) -> list[float]:
            _, reward = quadratic_toy(env, seed)
            res = run_agent(env, lambda r: args.scale * reward(r), cfg, seed=seed, progress=False)
            return [h["reward"] / args.scale for h in res.history]
    else:
        model = args.model or "tiny"
        net = CifarDenseNet(13, 4, 10, stem_channels=6) if model == "tiny" else densenet40()
        cg = build(net.eval(), torch.zeros(1, 3, *((16, 16) if model == "tiny" else (32, 32))))
        budget = args.budget or 0.6
        cfg = ControllerConfig(**{"episodes": args.episodes, **over})

        def run(seed: int) -> list[float]:
            _, evaluate = match_toy(cg, budget, seed)
            res = search_connections(cg, evaluate, method="ads", budget=budget, cfg=cfg, seed=seed, progress=False)
            return [h["reward"] for h in res.history]

    print(f"{args.agent} on {model}, {args.episodes} episodes, overrides {over or 'none'}")
    print("| seed | first | last | last - first | seconds |\n|---|---|---|---|---|")
    gains, firsts, lasts = [], [], []
    for seed in args.seeds:
        t0 = time.perf_counter()
        r = np.array(run(seed))
        first, last = r[: args.k].mean(), r[-args.k :].mean()
        firsts.append(first), lasts.append(last), gains.append(last - first)
        secs = time.perf_counter() - t0
        print(f"| {seed} | {first:.3f} | {last:.3f} | {last - first:+.3f} | {secs:.1f} |", flush=True)
    print(f"| mean | {np.mean(firsts):.3f} | {np.mean(lasts):.3f} | {np.mean(gains):+.3f} (min {min(gains):+.3f}) | |")


if __name__ == "__main__":
    main()

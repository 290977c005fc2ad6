"""Search speed and quality of the learned compensation on ResNet-56 / CIFAR-10 (CPU).

Default mode: run a short search at ``--budget`` (fraction of MACs kept) and report seconds per candidate,
total search time and best fitness; then prune with the learned compensation (lcp) and with the global,
uniform and random rankings, recalibrate BatchNorm on training batches (no fine-tuning) and measure the
held-out loss and the TEST accuracy. Writes ``benchmarks/results/search_speed.csv``, a row per method as it
is measured; a row replaces the one with the same tag, settings and method (``SEARCH_KEYS``), so a rerun updates
its rows instead of adding more.

``--kendall N``: how well the proxy fitness predicts accuracy after fine-tuning. N random candidates (LeGR's
initial population distribution) are scored by the fitness, fine-tuned for ``--ft-steps`` SGD steps (a
fraction of an epoch: a whole epoch per candidate is too slow on 2 cores) and evaluated on the test split;
writes ``benchmarks/results/proxy_kendall.csv`` and Kendall's tau between the fitness and the error. Each
candidate's row is written as soon as it is fine-tuned (a run first removes the rows of its ``--tag``), and
the tau columns are added to this run's rows at the end: an interrupted run keeps its candidates, without tau.

Needs ``LCP_DATA`` and ``LCP_WEIGHTS`` (``source ../shared/offline-env.sh``); without them it says so and exits.

    python benchmarks/search_speed.py --candidates 80
    python benchmarks/search_speed.py --kendall 12 --ft-steps 100
    python benchmarks/search_speed.py --kendall 16 --ft-steps 351 --device cuda   # one whole epoch each
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
# what identifies a row: a row written with the same values replaces the old one
SEARCH_KEYS = (
    "tag",
    "model",
    "budget",
    "optimizer",
    "compensation",
    "aggregate",
    "candidates",
    "population",
    "tournament",
    "recal_batches",
    "eval_images",
    "final_recal_batches",
    "label_free",
    "seed",
    "method",
)
KENDALL_KEYS = ("tag", "candidate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", type=int, default=80, help="candidates of the search (default 80)")
    p.add_argument("--budget", type=float, default=0.5, help="fraction of MACs kept (default 0.5)")
    p.add_argument("--optimizer", default="legr")
    p.add_argument("--compensation", default="affine", choices=("affine", "additive"))
    p.add_argument(
        "--population",
        type=int,
        default=None,
        help="legr population (default: candidates/5 between 8 and 64, LeGR's 64 at 320+)",
    )
    p.add_argument("--tournament", type=int, default=None, help="legr tournament (default: population/4)")
    p.add_argument("--aggregate", default="mean", choices=("mean", "sum"), help="unit score aggregation")
    p.add_argument("--recal-batches", type=int, default=4, help="fitness: BN recalibration batches of 128")
    p.add_argument("--eval-images", type=int, default=1000, help="fitness: held-out images scored")
    p.add_argument("--final-recal-batches", type=int, default=50, help="BN recalibration batches for the report")
    p.add_argument("--label-free", action="store_true", help="label-free fitness (KL to the unpruned outputs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--kendall", type=int, default=0, metavar="N", help="proxy quality mode with N candidates")
    p.add_argument("--ft-steps", type=int, default=100, help="kendall: fine-tuning steps of 128 per candidate")
    p.add_argument("--device", default="cpu", help="kendall: device for fine-tuning and evaluation")
    p.add_argument(
        "--tag",
        default="",
        help="label stored in the CSV rows; part of a row's key (--kendall: tag and candidate, so a rerun with the "
        "same tag replaces that run's rows)",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def load(args: argparse.Namespace) -> tuple[Any, Any, Any, Any, np.ndarray]:
    """CIFAR-10 bundle, pretrained ResNet-56, its graph, cost model and unit scores."""
    from lcp.cut import importance as imp
    from lcp.engine.cost import CostModel
    from lcp.engine.graph import build_graph
    from lcp.models.factory import create_model, default_checkpoint, load_checkpoint
    from lcp.training.data import load_data

    bundle = load_data("cifar10", seed=args.seed)
    ckpt = default_checkpoint("resnet56", "cifar10")
    if ckpt is None:
        raise SystemExit(f"no resnet56_cifar10.pt under LCP_WEIGHTS={os.environ['LCP_WEIGHTS']}")
    model = load_checkpoint(create_model("resnet56"), ckpt).eval()
    graph = build_graph(model, torch.zeros(1, *bundle.input_size))
    scores = imp.unit_scores(graph, imp.filter_scores(graph, "l2"), args.aggregate)
    return bundle, model, graph, CostModel(graph), scores


def measure(
    graph: Any, removed: np.ndarray, bundle: Any, recal_batches: int, seed: int, holdout: bool = True
) -> tuple[Any, dict]:
    """Pruned network after BN recalibration: (held-out loss,) test top-1 and loss."""
    from lcp.engine.surgery import apply_plan
    from lcp.training.train import evaluate, recalibrate_bn

    pruned = apply_plan(graph, removed)
    recalibrate_bn(pruned, bundle.loader("train", 128, shuffle=True, seed=seed), batches=recal_batches)
    out = {"holdout_loss": evaluate(pruned, bundle.loader("holdout", 250))["loss"]} if holdout else {}
    test = evaluate(pruned, bundle.loader("test", 250))
    return pruned, {**out, "test_top1": test["top1"], "test_loss": test["loss"]}


def drop_tag(path: Path, tag: str) -> None:
    """Remove the rows of ``tag`` from the CSV at ``path`` (rewritten atomically; no file, nothing to do)."""
    import csv

    from lcp.io import atomic_path

    if not path.is_file():
        return
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames or [], list(reader)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(r for r in rows if r.get("tag") != tag)


def write_row(row: dict, path: Path, keys: tuple[str, ...]) -> None:
    """Add ``row`` to the CSV at ``path`` in place of the rows that agree with it on ``keys`` (rewritten
    atomically; the union of the columns)."""
    from lcp.io import upsert_csv_row

    upsert_csv_row(path, row, keys)


def run_search(args: argparse.Namespace) -> None:
    from lcp.cut.ranking import plan
    from lcp.methods.legr import make_fitness, search

    bundle, model, graph, cost, scores = load(args)
    fitness = make_fitness(
        graph,
        cost,
        scores,
        bundle,
        budget=args.budget,
        recal_batches=args.recal_batches,
        eval_images=args.eval_images,
        label_free=args.label_free,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    res = search(
        graph,
        scores,
        fitness,
        optimizer=args.optimizer,
        compensation=args.compensation,
        candidates=args.candidates,
        population=args.population,
        tournament=args.tournament,
        seed=args.seed,
        progress=sys.stderr.isatty(),
    )
    search_s = time.perf_counter() - t0
    per = float(np.mean([h["seconds"] for h in res.history]))
    ident = res.history[0]["fitness"]
    print(
        f"search: {args.candidates} candidates in {search_s:.1f} s ({per:.2f} s/candidate); "
        f"fitness identity {ident:.4f} -> best {res.best_fitness:.4f}"
    )
    common = {
        "tag": args.tag,
        "model": "resnet56",
        "budget": args.budget,
        "optimizer": args.optimizer,
        "compensation": args.compensation,
        "aggregate": args.aggregate,
        "candidates": args.candidates,
        "population": args.population,
        "tournament": args.tournament,
        "recal_batches": args.recal_batches,
        "eval_images": args.eval_images,
        "final_recal_batches": args.final_recal_batches,
        "label_free": args.label_free,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "s_per_candidate": round(per, 3),
        "search_s": round(search_s, 1),
        "fitness_identity": ident,
        "fitness_best": res.best_fitness,
    }
    for method in ("lcp", "global", "uniform", "random"):
        p = plan(graph, cost, scores, budget=args.budget, method=method, transforms=res.transforms, seed=args.seed)
        _, m = measure(graph, p.removed, bundle, args.final_recal_batches, args.seed)
        row = {
            **common,
            "method": method,
            "macs_ratio": round(p.macs_ratio, 4),
            "params_ratio": round(p.params_ratio, 4),
            **{k: round(v, 4) for k, v in m.items()},
        }
        write_row(row, args.out / "search_speed.csv", SEARCH_KEYS)
        print(
            f"{method:8s} MACs {p.macs_ratio:.3f}  held-out loss {m['holdout_loss']:.4f}  "
            f"test top-1 {m['test_top1']:.2f}%  test loss {m['test_loss']:.4f}",
            flush=True,
        )
    print(f"wrote {args.out / 'search_speed.csv'}")


class Steps:
    """The first ``n`` shuffled, augmented training batches (a fraction of an epoch) with a length."""

    def __init__(self, bundle: Any, n: int, seed: int):
        self.loader = bundle.loader("train", 128, shuffle=True, augment=True, seed=seed, drop_last=True)
        self.n = min(n, len(self.loader))

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator:
        for i, batch in enumerate(self.loader):
            if i >= self.n:
                return
            yield batch


def run_kendall(args: argparse.Namespace) -> None:
    from scipy.stats import kendalltau

    from lcp.cut.ranking import Transforms, plan
    from lcp.methods.legr import group_std, make_fitness
    from lcp.training.train import evaluate, finetune

    if args.kendall < 10:
        raise SystemExit("--kendall needs N >= 10 candidates")
    bundle, model, graph, cost, scores = load(args)
    fitness = make_fitness(
        graph,
        cost,
        scores,
        bundle,
        budget=args.budget,
        recal_batches=args.recal_batches,
        eval_images=args.eval_images,
        label_free=args.label_free,
        seed=args.seed,
    )
    drop_tag(args.out / "proxy_kendall.csv", args.tag)  # a rerun replaces the tag's rows, fewer candidates too
    rng = np.random.default_rng(args.seed + 1)
    std = group_std(graph, scores)
    names = [g.name for g in graph.groups]
    rows = []
    for i in range(args.kendall):  # LeGR's initial population: alpha ~ LogNormal(0, 1), kappa ~ N(0, std_g)
        tf = Transforms(np.exp(rng.normal(0, 1, len(names))), rng.normal(0, std), names)
        t0 = time.perf_counter()
        fit = fitness(tf)
        t_fit = time.perf_counter() - t0
        p = plan(graph, cost, scores, budget=args.budget, method="lcp", transforms=tf)
        pruned, before = measure(graph, p.removed, bundle, args.final_recal_batches, args.seed, holdout=False)
        t1 = time.perf_counter()
        finetune(
            pruned,
            lambda epoch: Steps(bundle, args.ft_steps, args.seed),
            epochs=1,
            lr=0.01,
            seed=args.seed,
            progress=False,
            device=args.device,
        )
        after = evaluate(pruned, bundle.loader("test", 250), device=args.device)
        rows.append(
            {
                "tag": args.tag,
                "candidate": i,
                "fitness": fit,
                "fitness_s": round(t_fit, 2),
                "macs_ratio": round(p.macs_ratio, 4),
                "test_top1_noft": round(before["test_top1"], 2),
                "ft_steps": args.ft_steps,
                "device": args.device,
                "ft_s": round(time.perf_counter() - t1, 1),
                "test_top1_ft": round(after["top1"], 2),
            }
        )
        write_row(rows[-1], args.out / "proxy_kendall.csv", KENDALL_KEYS)  # now: a kill loses no candidate
        print(rows[-1], flush=True)
    fit = [r["fitness"] for r in rows]
    finite = [j for j, f in enumerate(fit) if math.isfinite(f)]
    tau_ft = kendalltau([fit[j] for j in finite], [-rows[j]["test_top1_ft"] for j in finite])
    tau_noft = kendalltau([fit[j] for j in finite], [-rows[j]["test_top1_noft"] for j in finite])
    for r in rows:
        r.update(
            kendall_tau_ft=round(float(tau_ft.statistic), 4),
            kendall_p_ft=float(tau_ft.pvalue),
            kendall_tau_noft=round(float(tau_noft.statistic), 4),
        )
        write_row(r, args.out / "proxy_kendall.csv", KENDALL_KEYS)
    print(
        f"Kendall tau(fitness, test error after {args.ft_steps} steps) = {tau_ft.statistic:.3f} "
        f"(p={tau_ft.pvalue:.3g}); without fine-tuning {tau_noft.statistic:.3f}"
    )
    print(f"wrote {args.out / 'proxy_kendall.csv'}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # a short search with LeGR's population of 64 is mostly random initial members: scale it down
    args.population = args.population or min(64, max(8, args.candidates // 5))
    args.tournament = args.tournament or max(2, args.population // 4)
    if not (os.environ.get("LCP_DATA") and os.environ.get("LCP_WEIGHTS")):
        print("skipped: set LCP_DATA and LCP_WEIGHTS (source ../shared/offline-env.sh) to run this benchmark")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    run_kendall(args) if args.kendall else run_search(args)


if __name__ == "__main__":
    main()

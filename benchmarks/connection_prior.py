"""Where the connection search starts: the importance prior's own mask, before any search or fine-tuning.

For a DenseNet checkpoint at ``--budget`` (a fraction of the MACs), every row is one network scored zero-shot on
every held-out image after BatchNorm recalibration on 8 training batches (the evaluation that re-scores ``ads`` and
``lwp``'s best masks at the end of their search; never the test split):

- ``unpruned``: the network itself;
- ``prior slice-l1``: the connections kept by CondenseNet's slice-L1 prior (``connection_prior(cg)``, the weights
  alone), projected onto the budget as ``ads`` projects its first mask (filled up to the budget; ``lwp`` does not
  fill);
- ``prior output-share``: the same with the prior the search uses (``connection_prior(cg, batches)``: each slice's
  share of its consumer's output on the search's 4 recalibration batches);
- ``uniform``: ``lcp.prune(method="uniform", round_to=1)``, the channel cut the agents must beat.

Rows are written atomically to ``--out`` (keyed by row, model, checkpoint, budget and seed)::

    source ../shared/offline-env.sh
    python benchmarks/connection_prior.py --checkpoint benchmarks/checkpoints/densenet40_cpu8.safetensors --threads 1 \\
        --out benchmarks/results/connection_prior_densenet40.csv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import lcp
from lcp.engine.connection_importance import connection_prior
from lcp.engine.connections import ConnectionGraph
from lcp.io import upsert_csv_row
from lcp.methods.connections.method import FINAL_EVAL, HeldOut
from lcp.run.config import PruneConfig
from lcp.run.load import load_model_and_data
from lcp.training.train import recalibrate_bn


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="densenet40")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = PruneConfig(model=a.model, checkpoint=a.checkpoint, holdout=5000, progress=False)
    loaded = load_model_and_data(cfg, lambda *_a, **_k: None)
    model, bundle = loaded.model.eval(), loaded.bundle
    example = torch.zeros(1, *loaded.input_size)
    cg = ConnectionGraph(lcp.build_graph(model, example))
    final = HeldOut.from_bundle(cg, bundle, seed=a.seed, **FINAL_EVAL)
    search = HeldOut.from_bundle(cg, bundle, seed=a.seed)  # the batches the search measures its prior on
    priors = {"prior slice-l1": connection_prior(cg), "prior output-share": connection_prior(cg, search.recal)}
    base = {"model": a.model, "checkpoint": a.checkpoint, "budget": a.budget, "seed": a.seed, "heldout_images": final.n}

    def write(row: str, acc: float, macs: float, **extra) -> None:
        upsert_csv_row(
            a.out,
            {**base, "row": row, "top1": round(100 * acc, 2), "macs_ratio": round(macs, 4), **extra},
            ("row", "model", "checkpoint", "budget", "seed"),
        )
        print(f"{row}: held-out top-1 {100 * acc:.2f}% at {macs:.4f} of the MACs", flush=True)

    t = time.perf_counter()
    write("unpruned", final(cg.full())["acc"], 1.0)
    for name, prior in priors.items():
        keep = cg.project(cg.full(), prior, budget=a.budget, fill=True)
        write(
            name,
            final(keep)["acc"],
            cg.value(keep, "macs") / cg.macs_base,
            connections_kept=int(keep.sum()),
            connections=cg.n,
            layers_alive=int(cg.alive(keep).sum()),
        )
    res = lcp.prune(model, example, budget=a.budget, method="uniform", round_to=1)
    pruned = res.model.eval()
    with torch.inference_mode():
        recalibrate_bn(pruned, final.recal, batches=len(final.recal))
        right = sum(int((pruned(x).argmax(1) == y).sum()) for x, y in zip(final.eval_x, final.eval_y))
    write("uniform", right / final.n, res.plan.macs / res.plan.macs_base)
    print(f"{time.perf_counter() - t:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Is the search's best candidate a winner's curse? Its top candidates re-scored on every held-out image.

    source ../shared/offline-env.sh
    python benchmarks/search_rescore.py runs/card --top 4

The search (``lcp prune`` / ``lcp search``, method ``lcp``) scores each candidate compensation on a subset of the
held-out split (``--search-eval-images``, 1,000 by default) and keeps the best of 40-400 of them, so its choice
could be luck on those images. For a finished run folder, the ``--top`` best distinct cuts of its search (by
the search's own fitness, from ``search_state.json``) are cut again from the original network, their
BatchNorm recalibrated on 20 training batches, and scored on all held-out images (cross-entropy and top-1) and
on the test split. If the re-scored order differs from the search's and the test split agrees with it,
re-scoring the top few would pick a better network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import lcp
from lcp.errors import LcpError
from lcp.io import read_json
from lcp.methods.legr.evaluator import transforms_from_vector
from lcp.models.store import widths
from lcp.run.config import PruneConfig
from lcp.run.load import load_model_and_data
from lcp.training.evaluate import evaluate, recalibrate_bn, torch_threads


def rescore(folder: Path, top: int, threads: int, log=print) -> list[dict]:
    """One row per re-scored candidate: its index, the search's fitness, held-out loss and top-1, test top-1."""
    sig = read_json(folder / "run.json", what="run.json")["signature"]
    spec = read_json(folder / "channels.json", what="channels.json")
    if not (folder / "search_state.json").is_file() or spec.get("method") != "lcp":
        raise LcpError(f"{folder} holds no lcp search (search_state.json of method lcp)")
    unsupported = [k for k in ("pretrained", "max_removal", "depth", "time_aware", "structure_from") if sig.get(k)]
    if unsupported:
        raise LcpError(f"{folder} was cut with {', '.join(unsupported)}: not re-cut here")
    state = read_json(folder / "search_state.json", what="search_state.json")
    if state["settings"].get("optimizer") != "legr":
        raise LcpError("only the legr optimizer's candidates are [log alpha, kappa] vectors")
    same = {k: sig[k] for k in ("data", "checkpoint", "input_size", "holdout") if sig.get(k) is not None}
    cfg = PruneConfig(model=sig["model"], **same)
    loaded = load_model_and_data(cfg, log=lambda *a, **k: None)
    model, x = loaded.model.eval(), torch.zeros(1, *loaded.input_size)
    graph = lcp.build_graph(model, x, ignore=sig.get("ignore") or ())
    bundle, rows, seen = loaded.bundle, [], set()
    ranked = sorted(range(len(state["evaluated"])), key=lambda i: state["evaluated"][i]["fitness"])
    with torch_threads(threads):
        for i in ranked:
            if len(rows) == top:
                break
            cand = state["evaluated"][i]
            result = lcp.prune(
                model,
                x,
                budget=spec["budget"],
                budget_type=spec["budget_type"],
                method="lcp",
                transforms=transforms_from_vector(graph, np.asarray(cand["z"], dtype=np.float64)),
                importance=sig["importance"],
                aggregate=sig["aggregate"],
                min_ratio=sig["min_ratio"],
                round_to=sig["round_to"],
                ignore=sig.get("ignore") or (),
            )
            shape = tuple(sorted((n, w[0]) for n, w in widths(result.model).items()))
            if shape in seen:  # the same cut from another compensation
                continue
            seen.add(shape)
            net = result.model
            recalibrate_bn(net, bundle.loader("train", 128, shuffle=True, augment=False, seed=0), batches=20)
            held, test = evaluate(net, bundle.loader("holdout", 256)), evaluate(net, bundle.loader("test", 256))
            row = {
                "candidate": i + 1,
                "widths": dict(shape),
                "search_fitness": cand["fitness"],
                "holdout_loss": held["loss"],
                "holdout_top1": held["top1"],
                "test_top1": test["top1"],
            }
            rows.append(row)
            log(
                f"candidate {i + 1}: search fitness {cand['fitness']:.4f}, all {len(bundle.holdout_x)} held-out "
                f"images {held['loss']:.4f} ({held['top1']:.2f}%), test {test['top1']:.2f}%"
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="an lcp prune (method lcp) output folder")
    p.add_argument("--top", type=int, default=5, help="distinct cuts to re-score (default 5)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.top < 1:
        p.error("--top must be at least 1")
    try:
        rows = rescore(a.folder, a.top, a.threads)
    except LcpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pick = min(rows, key=lambda r: r["holdout_loss"])
    print(
        f"the search's pick: candidate {rows[0]['candidate']} ({rows[0]['test_top1']:.2f}% test); re-scored pick: "
        f"candidate {pick['candidate']} ({pick['test_top1']:.2f}% test)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Speed-up of pruned run folders over their original, timed in alternating rounds on this machine.

    source ../shared/offline-env.sh
    python benchmarks/paired_speed.py runs/a runs/b --batches 64,1 --threads 2

For each folder, its pruned network and the original it was cut from (the folder's model and weights, as
``lcp prune`` loaded them) are timed by ``lcp.cut.latency.paired_latency`` (eager, ``--rounds`` alternating
rounds, ``--repeats`` timings of each): the median of the per-round ratios and its standard error.
``--runtime onnxruntime`` exports both to ONNX and times them in ONNX Runtime instead; ``--runtime compile``
times both through ``torch.compile`` (kernels specialized per batch size).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lcp
from lcp.cut.latency import RUNTIMES, in_runtime, median_error, paired_latency
from lcp.errors import LcpError
from lcp.run.config import PruneConfig
from lcp.run.load import load_model_and_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--batches", default="64,1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--repeats", type=int, default=60)
    p.add_argument("--runtime", default="eager", choices=RUNTIMES, help="what runs both networks (default eager)")
    a = p.parse_args()
    for folder in a.folders:
        run = json.loads((folder / "run.json").read_text())["signature"]
        data = json.loads((folder / "channels.json").read_text()).get("dataset") or "cifar10"
        cfg = PruneConfig(model=run["model"], data=run.get("data") or data, checkpoint=run.get("checkpoint"))
        loaded = load_model_and_data(cfg, log=lambda *x, **k: None)
        size = tuple(loaded.input_size)
        pruned = in_runtime(lcp.load(folder).eval(), a.runtime, size, a.threads)
        original = in_runtime(loaded.model.eval(), a.runtime, size, a.threads)
        for b in (int(x) for x in a.batches.split(",")):
            t = paired_latency(
                pruned, original, size, batch=b, n_threads=a.threads, rounds=a.rounds,
                repeats=a.repeats,
            )  # fmt: skip
            err = median_error(t["rounds"]) * t["ratio"]
            print(
                f"{folder} batch {b}: latency ratio {t['ratio']:.3f} ± {err:.3f}, speed-up {1 / t['ratio']:.2f}x "
                f"({t['reference_ms']:.1f} ms -> {t['median_ms']:.1f} ms)",
                flush=True,
            )


if __name__ == "__main__":
    try:
        main()
    except LcpError as err:  # bad input (a folder that is no run, missing data): one line, exit 2
        raise SystemExit(f"{Path(__file__).name}: error: {err}") from None

"""Where a search candidate's time goes: the cut (``Fitness.prune``) and the scoring (``Fitness.score``:
BatchNorm recalibration and the held-out forward passes), per memory format, on a device.

    source ../shared/offline-env.sh
    python benchmarks/fitness_profile.py --device cuda    # prints one line per candidate, then a torch profile

Four random compensations per model (ResNet-56 and MobileNetV2 with their shared weights, budget 0.5, the
default fitness), each timed once with channels-last images and weights and once contiguous.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import lcp
from lcp.cut import importance as imp
from lcp.cut.ranking import Transforms
from lcp.engine.cost import CostModel
from lcp.methods.legr.fitness import make_fitness
from lcp.run.config import PruneConfig
from lcp.run.load import load_model_and_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="mobilenetv2,resnet56")
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument("--profile", action="store_true", help="print torch.profiler's table of one more candidate")
    a = p.parse_args()
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    for name in a.models.split(","):
        loaded = load_model_and_data(PruneConfig(model=name, data="cifar10"), log=lambda *x, **k: None)
        graph = lcp.build_graph(loaded.model.eval(), torch.zeros(1, *loaded.input_size))
        cost = CostModel(graph)
        scores = imp.unit_scores(graph, imp.filter_scores(graph, "l2"), "mean")
        for channels_last in (True, False):
            fit = make_fitness(graph, cost, scores, loaded.bundle, budget=0.5, device=a.device)
            fit.channels_last = channels_last  # what the fitness would choose is overridden for the comparison
            if channels_last:
                fit.recal = [x.contiguous(memory_format=torch.channels_last) for x in fit.recal]
                fit.eval_x = [x.contiguous(memory_format=torch.channels_last) for x in fit.eval_x]
            print(f"{name} on {a.device}, channels_last {channels_last}", flush=True)
            rng = np.random.default_rng(0)
            for i in range(a.candidates):
                n = len(graph.groups)
                tr = Transforms(alpha=np.exp(rng.normal(0, 0.3, n)), kappa=rng.normal(0, 0.3, n))
                t0 = time.perf_counter()
                model = fit.prune(tr)
                t1 = time.perf_counter()
                f = fit.score(model)
                sync()
                t2 = time.perf_counter()
                print(f"  candidate {i}: prune {t1 - t0:.3f} s, score {t2 - t1:.3f} s, fitness {f:.3f}", flush=True)
            if a.profile:
                with torch.profiler.profile() as prof:
                    fit.score(fit.prune(tr))
                    sync()
                print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12), flush=True)


if __name__ == "__main__":
    main()

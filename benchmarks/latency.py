"""Fewer MACs must mean faster: MACs budgets against measured-latency budgets on this CPU.

For ResNet-56 and MobileNetV2 (CIFAR-10 shapes) at budgets 0.7, 0.5 and 0.3, prune with the plain global
ranking to a MACs budget and to latency budgets (measured at batch 1 and at batch 64; the cut times each network
with --cut-repeats timings), then re-time the original and every pruned network at batch 1 and 64 against the
original (``lcp.cut.latency.paired_latency``: --rounds alternating rounds, --repeats timings of each network in
all, the median of the per-round ratios, same threads; ``retimed_error`` is the standard error of that median).
Writes benchmarks/results/latency.csv and docs/latency.png, and prints the table that docs/latency.md shows.

    python benchmarks/latency.py --threads 1 --out benchmarks/results/latency_cpu.csv --plot docs/latency_cpu.png

With ``--data cifar10`` the models carry their trained weights ($LCP_WEIGHTS) and every network's top-1 after
BatchNorm recalibration is added (``top1_recal``, measured after all timing), with a second row of plots.

Rows are written as they are measured; a rerun with the same settings keeps the rows already in --out and
measures the rest (--overwrite measures all again). Rows already in --out of models, budgets or budget kinds
this run does not make stay, with --overwrite too (and are plotted with its rows).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import _host  # noqa: E402

import lcp  # noqa: E402
from lcp.cut.alignment import measure_alignment
from lcp.cut.latency import RUNTIMES, in_runtime, median_error, paired_latency
from lcp.cut.options import CutOptions
from lcp.cut.pruner import prune_graph
from lcp.engine.depth import allow_depth
from lcp.errors import LcpError
from lcp.io import atomic_path

ROOT = Path(__file__).resolve().parents[1]


def _planned(row: dict, models: list[str], budgets: list[float], kinds: list[str]) -> bool:
    """Whether a run of ``models`` at ``budgets`` and budget ``kinds`` makes (or keeps) ``row``."""
    kind = "macs" if row.get("budget_type") == "macs" else "latency"
    return row.get("model") in models and kind in kinds and any(abs(float(row["budget"]) - b) < 1e-9 for b in budgets)


def run(
    models: list[str],
    budgets: list[float],
    threads: int,
    repeats: int,
    big_batch: int,
    device: str = "cpu",
    rounds: int = 5,
    min_seconds: float = 1.0,
    cut_repeats: int = 30,
    data: str | None = None,
    round_to: str = str(CutOptions.round_to),
    kinds: tuple[str, ...] = ("macs", "latency"),
    image_size: int = 32,
    depth: bool = False,
    runtime: str = "eager",
    prior: pd.DataFrame | None = None,
    save: Callable[[list[dict]], None] | None = None,
) -> pd.DataFrame:
    """Cut and re-time every (model, budget, budget type); with ``data``, the models carry their trained weights
    and every network's top-1 after BatchNorm recalibration is measured once all timing is done. ``round_to``:
    a whole number, or ``auto`` (measured per model on ``device`` at ``big_batch``); ``kinds``: macs and/or latency
    budgets; ``image_size``: the input's side for models without data; ``depth``: the walk may also remove whole
    residual branches (``lcp.engine.depth``); ``runtime``: what the re-timing runs both networks in (``eager``,
    ``compile``: ``torch.compile`` per batch size, or ``onnxruntime``: each exported to ONNX and run by ONNX Runtime
    on the CPU with ``threads`` threads). ``prior``: the rows an earlier run wrote; those made with the same
    settings are kept instead of measured again (and those of an earlier run with ``data`` only with their
    accuracy). ``save`` is called with the rows after each new one, so an interrupted run loses nothing."""
    rows, accuracy = [], []
    same = {"device": device, "threads": threads, "repeats": repeats, "runtime": runtime, "depth": depth}
    same |= {"rounds": rounds, "cut_repeats": cut_repeats, "min_seconds": min_seconds, "big_batch": big_batch}
    same |= {"image_size": image_size, "data": data or "", "machine": _machine(device)}
    reuse = _reusable(prior, same, round_to, bool(data))
    for name in models:
        if data:
            from lcp.run.config import PruneConfig
            from lcp.run.load import load_model_and_data

            loaded = load_model_and_data(PruneConfig(model=name, data=data), log=lambda *a, **k: None)
            model, size = loaded.model.eval(), tuple(loaded.input_size)
        else:
            model, size = lcp.create_model(name).eval(), (3, image_size, image_size)
        graph = lcp.build_graph(model, torch.zeros(1, *size))
        allow_depth(graph, depth)
        reference = in_runtime(model, runtime, size, threads)
        if round_to == "auto":
            align = measure_alignment(graph, device=device, batch=big_batch, n_threads=threads).round_to
        else:
            align = int(round_to)
        print(f"{name}: round_to {align}{' (auto)' if round_to == 'auto' else ''}", flush=True)
        if data:
            accuracy.append((None, model, loaded.bundle))
        for budget in budgets:
            for budget_type, lat_batch in (("macs", 1), ("latency", 1), ("latency", big_batch)):
                if budget_type not in kinds:
                    continue
                kind = budget_type if budget_type == "macs" else f"latency_b{lat_batch}"
                old = reuse.get((name, kind, round(budget, 6), align))
                if old is not None:
                    rows.append(old)
                    print(f"{name} {kind} {budget:g}: kept from the earlier run", flush=True)
                    continue
                try:
                    res = prune_graph(
                        graph,
                        budget=budget,
                        budget_type=budget_type,
                        round_to=align,
                        latency={"batch": lat_batch, "device": device, "n_threads": threads, "repeats": cut_repeats},
                    )
                except lcp.UnreachableBudget as e:
                    rows.append(
                        {
                            "model": name,
                            "budget_type": budget_type if budget_type == "macs" else f"latency_b{lat_batch}",
                            "budget": budget,
                            "status": "unreachable",
                            "lowest_latency_ratio": round(e.lowest, 4),
                            "round_to": align,
                            **same,
                        }
                    )
                    print(rows[-1], flush=True)
                    if save:
                        save(rows)
                    continue
                timed = in_runtime(res.model, runtime, size, threads)
                t = {
                    b: paired_latency(
                        timed,
                        reference,
                        size,
                        batch=b,
                        device=device,
                        n_threads=threads,
                        rounds=rounds,
                        repeats=repeats,
                        min_seconds=min_seconds,
                    )
                    for b in (1, big_batch)
                }
                own = t[lat_batch]["ratio"] / budget - 1  # a latency budget re-timed at its own batch
                err = median_error(t[lat_batch]["rounds"])
                macs_ratio = res.plan.macs_ratio
                rows.append(
                    {
                        "model": name,
                        "budget_type": budget_type if budget_type == "macs" else f"latency_b{lat_batch}",
                        "budget": budget,
                        "status": "ok",
                        "macs_ratio": round(macs_ratio, 4),
                        "params_ratio": round(res.plan.params_ratio, 4),
                        "latency_ratio_b1": round(t[1]["ratio"], 4),
                        f"latency_ratio_b{big_batch}": round(t[big_batch]["ratio"], 4),
                        "speedup_b1": round(1 / t[1]["ratio"], 3),
                        f"speedup_b{big_batch}": round(1 / t[big_batch]["ratio"], 3),
                        "ideal_speedup": round(1 / macs_ratio, 3),
                        "fraction_of_ideal_b1": round(macs_ratio / t[1]["ratio"], 3),
                        f"fraction_of_ideal_b{big_batch}": round(macs_ratio / t[big_batch]["ratio"], 3),
                        "base_ms_b1": round(t[1]["reference_ms"], 3),
                        f"base_ms_b{big_batch}": round(t[big_batch]["reference_ms"], 2),
                        "cut_latency_ratio": round(res.info["latency_ratio"], 4) if res.info else None,
                        "cut_walks": res.info.get("latency_walks"),
                        "cut_timings": res.info.get("latency_timings"),
                        "retimed_off_target": round(own, 4) if budget_type == "latency" else None,
                        "retimed_error": round(err, 4) if budget_type == "latency" else None,
                        "round_to": align,
                        "blocks_removed": sum(
                            bool(graph.depth[g.index] and res.plan.removed[g.units].all()) for g in graph.groups
                        ),
                        **same,
                    }
                )
                if data:
                    accuracy.append((len(rows) - 1, res.model, loaded.bundle))
                print(rows[-1], flush=True)
                if save:
                    save(rows)
    _accuracy(rows, accuracy)
    if save and accuracy:
        save(rows)
    return pd.DataFrame(rows)


def _machine(device: str) -> str:
    """What the timings were made on: the GPU's name, or the CPU model and its core count."""
    host = _host()
    return str(host["gpu"]) if device.startswith("cuda") and host["gpu"] else f"{host['cpu']} x{host['cores']}"


def _equal(a: object, b: object) -> bool:
    """Equal as numbers where both are (a CSV column with gaps turns 20 into 20.0), else as text."""
    if isinstance(a, bool) or isinstance(b, bool):
        return str(a) == str(b)
    try:
        return abs(float(a) - float(b)) < 1e-9  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(a) == str(b)


def _reusable(prior: pd.DataFrame | None, same: dict, round_to: str, accuracy: bool) -> dict[tuple, dict]:
    """The rows of ``prior`` made with the settings ``same`` (and the same ``round_to``, unless it is measured:
    then any), keyed by (model, budget type, budget, round_to); with ``accuracy``, only rows that have it."""
    if prior is None or prior.empty:
        return {}
    out = {}
    for r in prior.to_dict("records"):
        row = {k: v for k, v in r.items() if not (isinstance(v, float) and pd.isna(v))}
        if not all(_equal(row.get(k, ""), v) for k, v in same.items()):  # a gap in the CSV: ""
            continue
        if round_to != "auto" and int(row.get("round_to", -1)) != int(round_to):
            continue
        if accuracy and row.get("status") == "ok" and "top1_recal" not in row:
            continue
        out[(row["model"], row["budget_type"], round(float(row["budget"]), 6), int(row["round_to"]))] = row
    return out


def _accuracy(rows: list[dict], networks: list) -> None:
    """Top-1 (%) on the test split: the original's (``top1_base``) and every pruned network's after
    recalibrating its BatchNorm statistics on 20 training batches, no fine-tuning (``top1_recal``)."""
    from lcp.training.train import evaluate, recalibrate_bn

    base = None
    for i, net, bundle in networks:
        if i is None:
            base = evaluate(net, bundle.loader("test", 256))["top1"]
            continue
        recalibrate_bn(net, bundle.loader("train", 128, shuffle=True, seed=0), batches=20)
        rows[i].update(top1_base=round(base, 2), top1_recal=round(evaluate(net, bundle.loader("test", 256))["top1"], 2))
        print(rows[i]["model"], rows[i]["budget_type"], rows[i]["budget"], rows[i]["top1_recal"], flush=True)


def plot(df: pd.DataFrame, path: Path, big_batch: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = df.model.nunique()
    acc = "top1_recal" in df and df.top1_recal.notna().any()
    fig = Figure(figsize=(5 * n, 8 if acc else 4))
    FigureCanvasAgg(fig)
    for i, name in enumerate(df.model.unique()):
        if acc:  # second row: accuracy against the measured latency it costs, at batch big_batch
            ax = fig.add_subplot(2, n, n + i + 1)
            for bt, marker in (("macs", "o"), ("latency_b1", "s"), (f"latency_b{big_batch}", "^")):
                d = df[(df.model == name) & (df.budget_type == bt) & (df.status == "ok")]
                ax.plot(d[f"latency_ratio_b{big_batch}"], d.top1_recal, marker=marker, ls="", label=f"{bt} budget")
            ax.set_xlabel(f"measured latency ratio, batch {big_batch}")
            ax.set_ylabel("top-1 after BN recalibration (%)")
            ax.set_title(f"{name}: accuracy against latency")
            ax.legend(fontsize=7)
        ax = fig.add_subplot(2 if acc else 1, n, i + 1)
        for bt, marker in (("macs", "o"), ("latency_b1", "s"), (f"latency_b{big_batch}", "^")):
            d = df[(df.model == name) & (df.budget_type == bt) & (df.status == "ok")]
            ax.plot(d.macs_ratio, d.latency_ratio_b1, marker=marker, ls="-", label=f"{bt} budget, batch 1")
            ax.plot(
                d.macs_ratio,
                d[f"latency_ratio_b{big_batch}"],
                marker=marker,
                ls="--",
                label=f"{bt} budget, batch {big_batch}",
            )
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, label="ideal (latency = MACs)")
        ax.set_xlabel("MACs ratio")
        ax.set_ylabel("measured latency ratio")
        ax.set_title(name)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet56,mobilenetv2")
    p.add_argument("--budgets", default="0.7,0.5,0.3")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument(
        "--repeats",
        type=int,
        default=200,
        help="timings of each network when it is re-timed after the run (default 200)",
    )
    p.add_argument("--rounds", type=int, default=20, help="alternating rounds they are split into (default 20)")
    p.add_argument(
        "--cut-repeats",
        type=int,
        default=30,
        help="timings of each network per measurement in the latency cut (default 30)",
    )
    p.add_argument(
        "--min-seconds",
        type=float,
        default=1.0,
        help="time each network for at least this long per measurement (default 1.0)",
    )
    p.add_argument("--big-batch", type=int, default=64)
    p.add_argument(
        "--round-to",
        default=str(CutOptions.round_to),
        help="widths in multiples of N, or auto: measured per model on --device at --big-batch (default: lcp's, "
        f"{CutOptions.round_to})",
    )
    p.add_argument("--kinds", default="macs,latency", help="budget kinds to cut: macs and/or latency (default both)")
    p.add_argument("--image-size", type=int, default=32, help="input side for models without --data (default 32)")
    p.add_argument("--depth", action="store_true", help="let the walk remove whole residual branches too")
    p.add_argument(
        "--runtime", default="eager", choices=RUNTIMES, help="what the re-timing runs the networks in (default eager)"
    )
    p.add_argument(
        "--data",
        help="data set (cifar10 or an ImageFolder root): prune the trained models "
        "(weights from $LCP_WEIGHTS) and add each network's top-1 after BN recalibration",
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latency.csv")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "latency.png")
    p.add_argument("--overwrite", action="store_true", help="measure every row again instead of keeping them")
    a = p.parse_args()
    written = pd.read_csv(a.out) if a.out.is_file() and a.out.stat().st_size else None
    prior = None if a.overwrite else written
    a.out.parent.mkdir(parents=True, exist_ok=True)

    models, budgets, kinds = a.models.split(","), [float(b) for b in a.budgets.split(",")], a.kinds.split(",")
    earlier = [] if written is None else written.to_dict("records")
    others = [r for r in earlier if not _planned(r, models, budgets, kinds)]

    def save(rows: list[dict]) -> None:  # the earlier run's rows of other models, budgets or kinds stay
        with atomic_path(a.out) as tmp:
            pd.DataFrame(others + rows).to_csv(tmp, index=False)

    df = run(
        models,
        budgets,
        a.threads,
        a.repeats,
        a.big_batch,
        a.device,
        a.rounds,
        a.min_seconds,
        a.cut_repeats,
        a.data,
        a.round_to,
        tuple(kinds),
        a.image_size,
        a.depth,
        a.runtime,
        prior,
        save,
    )
    save(df.to_dict("records"))
    everything = pd.read_csv(a.out) if a.out.stat().st_size > 1 else pd.DataFrame()  # no row: an empty file
    if "macs_ratio" in everything:  # no plot when every budget was unreachable
        plot(everything, a.plot, a.big_batch)
    print(df.to_string(index=False))


if __name__ == "__main__":
    try:
        main()
    except LcpError as err:  # bad input (a folder that is no run, missing data): one line, exit 2
        raise SystemExit(f"{Path(__file__).name}: error: {err}") from None

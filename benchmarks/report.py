"""Turn the method comparisons (``benchmarks/results/compare_*.csv``) into ``docs/benchmarks.md`` and a plot.

One section per CSV (one model): what was run (data, budgets, the fine-tuning recipe and its length, the search,
the machine, the wall time, the exact commands, all read from the CSV and its ``.meta.json`` written by
``benchmarks/compare.py``), a table with one row per method x budget (mean ± sample standard deviation where
several seeds were run), the rows that failed with their reasons, and a generated comparison with published
ResNet-56 numbers. ``docs/benchmarks.png`` plots top-1 against the MACs ratio per method. No number in the
page is typed by hand: re-run this script after any ``compare.py`` run.

    python benchmarks/report.py
    python benchmarks/report.py --csv runs/compare/compare_resnet20_quick.csv --md /tmp/b.md --png /tmp/b.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
METHOD_ORDER = [
    "ceiling",
    "lcp",
    "global",
    "uniform",
    "random",
    "lfgcl",
    "amc",
    "ads",
    "lwp",
    "torch_pruning",
    "modelopt",
]
MODEL_ORDER = ["resnet56", "mobilenetv2", "resnet20", "densenet40"]
MODEL_NAMES = {
    "resnet56": "ResNet-56",
    "resnet20": "ResNet-20",
    "mobilenetv2": "MobileNetV2",
    "densenet40": "DenseNet-40",
}
COLOURS = {
    "lcp": "#d62728",
    "global": "#1f77b4",
    "uniform": "#2ca02c",
    "random": "#7f7f7f",
    "lfgcl": "#ff7f0e",
    "amc": "#8c564b",
    "ads": "#17becf",
    "lwp": "#bcbd22",
    "torch_pruning": "#9467bd",
    "modelopt": "#e377c2",
}
#: lcp's agent and connection methods (``lcp.methods.ddpg.AGENT_METHODS``,
#: ``lcp.methods.connections.CONNECTION_METHODS``; this script imports no torch).
AGENT_METHODS, CONNECTION_METHODS = ("lfgcl", "amc"), ("ads", "lwp")
#: ``lcp prune``'s agent episodes (``--episodes``, ``--warmup-episodes``), used where a recipe sets none
AGENT_DEFAULTS = {"episodes": None, "warmup_episodes": 50}
#: each method's episodes when neither the recipe nor ``--episodes`` sets them (``lcp.methods.options``)
DEFAULT_EPISODES = {"lfgcl": 200, "amc": 200, "ads": 30, "lwp": 30}

#: What each method of compare.py is (the tables below say which ran, with their settings).
METHODS_TEXT = (
    "Methods: `lcp` (the learned layer compensation: a LeGR search, then lcp's global ranking); `global`, "
    "`uniform`, `random` (the same ranking walk with identity compensation, one keep ratio per group, a seeded "
    "random order); `lfgcl` and `amc` (a DDPG agent learns one keep ratio per channel group, rewarded by minus "
    "the KL divergence to the unpruned network's outputs, label-free, or minus the held-out cross-entropy; "
    "docs/agents.md); `ads` and `lwp` (DenseNets: an LSTM controller keeps or drops every dense connection, "
    "rewarded by held-out top-1, lwp with a bonus for a smaller network; the channel widths stay; "
    "docs/connections.md); `torch_pruning` (Torch-Pruning's global magnitude pruner driven to the same MACs); "
    "`modelopt` (NVIDIA Model Optimizer's FastNAS: per-layer measured damage at each width, then one threshold). "
    "The searches run lcp's own code (`lcp prune --method ...`) and score their candidates on the held-out split, "
    "never on the test split."
)

#: Published ResNet-56 / CIFAR-10 results (LeGR, CVPR 2020, Table 1; AMC as reported there).
PUBLISHED = [
    {"method": "LeGR", "base": 93.9, "pruned": 93.7, "spread": 0.2, "flops": 0.47, "epochs": 400},
    {"method": "AMC", "base": 92.8, "pruned": 91.9, "spread": None, "flops": 0.50, "epochs": 60},
]


#: Why Torch-Pruning breaks the CIFAR ResNets (checked by hand on ResNet-20 with torch-pruning 1.6.1: after
#: ``pruner.step()`` at pruning_ratio 0.3 the last residual stream has 63 channels and the classifier 60 inputs).
OPTION_A = {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110"}
OPTION_A_NOTE = (
    "Why: these CIFAR ResNets use option-A shortcuts (a stride-2 subsample whose missing channels are zero-padded "
    "with `F.pad`). Torch-Pruning's dependency graph does not follow channels through that padding, so it prunes "
    "the classifier's inputs as a group separate from the residual stream that feeds them, and the network it "
    "returns fails at the classifier (lcp handles the shortcut explicitly, see docs/engine.md). The row is "
    "reported as an error rather than patched, as a user of Torch-Pruning would meet it."
)


# --------------------------------------------------------------------------------------------------- reading


def _atomic_write(path: Path, write: Any) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then replace ``path`` (no torch import needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path) -> tuple[pd.DataFrame, dict]:
    df = pd.read_csv(path)
    meta_path = path.with_suffix(".meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return df, meta


def _order(df: pd.DataFrame) -> pd.DataFrame:
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return (
        df.assign(_m=df["method"].map(lambda m: rank.get(m, len(rank))), _b=-df["budget"])
        .sort_values(["_b", "_m"])
        .drop(columns=["_m", "_b"])
    )


PAIRED = ("top1_pruned", "top1_pruned_noft")  # kept per seed by ``summarise``


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (budget, method) over the ok rows: means, sample std where n > 1, and the seeds."""
    ok = df[df["status"].astype(str) == "ok"].copy()
    if ok.empty:
        return pd.DataFrame()
    ok["drop"] = ok["top1_base"] - ok["top1_pruned"]
    ok["drop_noft"] = ok["top1_base"] - ok["top1_pruned_noft"]
    if "latency_pruned_ms" in ok:
        ok["lat1"] = ok["latency_pruned_ms"] / ok["latency_base_ms"]
    if "latency64_pruned_ms" in ok:
        ok["lat64"] = ok["latency64_pruned_ms"] / ok["latency64_base_ms"]
    rows = []
    for (budget, method), g in ok.groupby(["budget", "method"], sort=False):
        r: dict[str, Any] = {
            "method": method,
            "budget": budget,
            "n": len(g),
            "seeds": ",".join(str(int(s)) for s in sorted(g["seed"])),
        }
        for col in (
            "macs_ratio",
            "params_ratio",
            "top1_base",
            "top1_pruned_noft",
            "top1_pruned",
            "drop",
            "drop_noft",
            "lat1",
            "lat64",
            "search_s",
            "prune_s",
            "finetune_s",
            "finetune_steps",
        ):
            if col in g:
                r[col] = float(g[col].mean())
                r[col + "_sd"] = float(g[col].std(ddof=1)) if len(g) > 1 else math.nan
        for col in PAIRED:  # per seed, for comparisons on the seeds two rows share
            r["by_seed_" + col] = g.groupby(g["seed"].astype(int))[col].mean().to_dict()
        rows.append(r)
    out = pd.DataFrame(rows)
    ceiling = ok[ok["method"] == "ceiling"]
    if not ceiling.empty:  # the unpruned network given the same recovery: the honest reference
        ref = ceiling.groupby(ceiling["seed"].astype(int))["top1_pruned"].mean().to_dict()

        def gap(values: dict[int, float]) -> float:
            """Ceiling minus the row on the seeds both have (same data order), else mean minus mean."""
            shared = sorted(set(values) & set(ref))
            if shared:
                return float(np.mean([ref[k] - values[k] for k in shared]))
            return float(np.mean(list(ref.values())) - np.mean(list(values.values())))

        out["vs_ceiling"] = out["by_seed_top1_pruned"].map(gap)
    return _order(out).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------- formatting


def _num(v: float, places: int) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{places}f}"


def _pm(r: pd.Series | dict, col: str, places: int) -> str:
    v, sd = r.get(col, math.nan), r.get(col + "_sd", math.nan)
    if isinstance(sd, float) and math.isfinite(sd):
        return f"{_num(v, places)} ± {_num(sd, places)}"
    return _num(v, places)


def md_table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    right = right if right is not None else set(range(1, len(header)))
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _epochs(v: float) -> str:
    v = float(v)
    return f"{int(v)}" if v.is_integer() else f"{v:g}"


def _plural(n: float, word: str) -> str:
    return f"{n:g} {word}" + ("" if n == 1 else "s")


def _name(model: str) -> str:
    return MODEL_NAMES.get(model, model)


def results_table(s: pd.DataFrame) -> str:
    timed = "lat1" in s
    header = [
        "method",
        "budget",
        "seeds",
        "MACs ratio",
        "params ratio",
        "top-1 BN recal (%)",
        "top-1 fine-tuned (%)",
        "drop vs base (pts)",
        *(["drop vs ceiling (pts)"] if "vs_ceiling" in s else []),
        *(["latency ratio b1", "latency ratio b64"] if timed else []),
        "search (s)",
        "fine-tune (s)",
    ]
    rows = []
    for _, r in s.iterrows():
        rows.append(
            [
                f"`{r['method']}`",
                f"{r['budget']:g}",
                str(r["seeds"]),
                _num(r["macs_ratio"], 3),
                _num(r["params_ratio"], 3),
                _pm(r, "top1_pruned_noft", 2),
                _pm(r, "top1_pruned", 2),
                _pm(r, "drop", 2),
                *([_num(r["vs_ceiling"], 2)] if "vs_ceiling" in s else []),
                *([_pm(r, "lat1", 2), _pm(r, "lat64", 2)] if timed else []),
                _num(r.get("search_s"), 0),
                _num(r.get("finetune_s"), 0),
            ]
        )
    return md_table(header, rows, right=set(range(1, len(header))) - {0})


_BUDGET_WORDS = {"macs": "MACs", "params": "params", "latency": "latency"}


def _flag(run: dict, name: str) -> str | None:
    """The value of ``--name X`` (or ``--name=X``) in a run's command; None when absent."""
    try:
        words = shlex.split(run.get("command", ""))
    except ValueError:
        return None
    for i, w in enumerate(words):
        if w == name and i + 1 < len(words):
            return words[i + 1]
        if w.startswith(name + "="):
            return w[len(name) + 1 :]
    return None


def _out_of(run: dict, default: str | None) -> str | None:
    """The name of the CSV a run wrote (``--out``, else ``default``: the recipe's)."""
    out = _flag(run, "--out") or default
    return Path(out).name if out else None


def _asked_for(run: dict, row: Any) -> bool:
    """Whether a run's command asked for ``row``: its ``--methods``, ``--budgets`` (a ceiling row: any) and
    ``--seeds``, where given."""
    method, budget, seed = (getattr(row, k, None) for k in ("method", "budget", "seed"))
    methods, budgets, seeds = (_flag(run, f) for f in ("--methods", "--budgets", "--seeds"))
    try:
        if methods and method is not None and str(method) not in methods.split(","):
            return False
        if budgets and budget is not None and method != "ceiling":
            if not any(abs(float(b) - float(budget)) < 1e-9 for b in budgets.split(",")):
                return False
        if seeds and seed is not None and str(int(float(seed))) not in seeds.split(","):
            return False
    except ValueError:
        return True
    return True


def _stamped(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows with a ``finished`` time."""
    if "finished" not in rows.columns:
        return rows.iloc[0:0]
    return rows[rows["finished"].map(lambda f: isinstance(f, str) and bool(f))]


def _rows_made(run: dict, runs: list[dict], stamped: pd.DataFrame, default_out: str | None) -> set:
    """The index of each of the ``stamped`` rows ``run`` finished: one its command asked for, finished while it
    ran; a run that did not finish ends, at the latest, where the next run of ``runs`` writing the same CSV
    started."""
    start, out = pd.Timestamp(run["started"]), _out_of(run, default_out)
    later = [
        pd.Timestamp(r["started"])
        for r in runs
        if r.get("started") and pd.Timestamp(r["started"]) > start and _out_of(r, default_out) == out
    ]
    end = pd.Timestamp(run["finished"]) if run.get("finished") else (min(later) if later else None)
    return {
        i
        for i, r in zip(stamped.index, stamped.itertuples())
        if start <= pd.Timestamp(r.finished) and (end is None or pd.Timestamp(r.finished) <= end) and _asked_for(run, r)
    }


def run_made_a_row(run: dict, runs: list[dict], rows: pd.DataFrame, default_out: str | None = None) -> bool:
    """Whether ``run`` (an invocation in a meta's ``runs``) finished one of ``rows`` (``_rows_made``): its wall
    time and dates belong to their table only then (a run of other budgets, or one cut off, or still going,
    before it made a row, stays out). Merge entries and rows without times: kept."""
    stamped = _stamped(rows)
    return not run.get("started") or stamped.empty or bool(_rows_made(run, runs, stamped, default_out))


def _runs(meta: dict, df: pd.DataFrame) -> list[dict]:
    """The runs of ``meta`` that finished a row of ``df``: a run that finished, by its time span and what its
    command asked for; a run that did not (cut off, or still going) only by the rows no finished run explains (a
    merged table's meta holds parallel runs, whose spans overlap). Merge entries, and every run when the rows
    have no times, are kept."""
    runs, default = meta.get("runs", []), (meta.get("config") or {}).get("out")
    stamped = _stamped(df)
    if stamped.empty:
        return list(runs)
    made = [_rows_made(r, runs, stamped, default) if r.get("started") else set() for r in runs]
    explained = set().union(*(m for r, m in zip(runs, made) if r.get("finished")))
    return [r for r, m in zip(runs, made) if not r.get("started") or (m if r.get("finished") else m - explained)]


def _commands(meta: dict, csv: Path) -> list[str]:
    """Every run's command in run order (one that made no row too: run again, it makes the rows it is for); a
    repeat stays (a merge after later runs brings in their rows)."""
    cmds = [r["command"] for r in meta.get("runs", []) if r.get("command")]
    kept = [c for i, c in enumerate(cmds) if i == 0 or c != cmds[i - 1]]  # only back-to-back repeats go
    return kept or [f"python benchmarks/compare.py --recipe <recipe> --out {csv}"]


def _wall(runs: list[dict]) -> float:
    return float(sum(r.get("wall_s", 0.0) for r in runs))


def _fast_candidates(search: dict, df: pd.DataFrame) -> str:
    """How many candidates the fast preset's lcp rows evaluated: the recipe's count, else the rows' own, else
    the preset's cap when they ran (40 before 2026-12-04, 80 since)."""
    if search.get("candidates"):
        return str(search["candidates"])
    counts = set()
    for _, r in df[df["method"] == "lcp"].iterrows():
        own, finished = r.get("search_candidates"), r.get("finished")
        if not pd.isna(own):
            counts.add(int(own))
        else:
            counts.add(40 if isinstance(finished, str) and "" < finished < "2026-12-04" else 80)
    n = sorted(counts) or [80]
    return str(n[0]) if len(n) == 1 else f"{n[0]} to {n[-1]}"


def _utc(t: str) -> pd.Timestamp:
    """An ISO time as UTC (a time without a zone is taken as UTC)."""
    ts = pd.Timestamp(t)
    return ts.tz_convert("UTC") if ts.tzinfo else ts.tz_localize("UTC")


def _dates(runs: list[dict], df: pd.DataFrame) -> str:
    """From the first run's start to the last run's end or the last row's, whichever is later (a run still going
    or cut off has no end)."""
    runs = [r for r in runs if r.get("started")]  # a merge (benchmarks/merge_rows.py) has none
    if not runs:
        return "unknown dates"
    ends = [r.get("finished") or r["started"] for r in runs] + list(_stamped(df).get("finished", []))
    first = min(_utc(r["started"]) for r in runs).strftime("%Y-%m-%d %H:%M")
    last = max(_utc(t) for t in ends).strftime("%Y-%m-%d %H:%M")
    return first if first == last else f"{first} to {last}"


ROW_SECONDS = ("search_s", "finetune_s", "recal_eval_s", "latency_s")  # what a row's work took, every run of it


def _unfinished(runs: list[dict]) -> bool:
    return any(r.get("started") and "wall_s" not in r for r in runs)


def setup_text(df: pd.DataFrame, meta: dict) -> str:
    """What was run, from the recipe settings and data recorded by compare.py."""
    cfg, data, host = meta.get("config", {}), meta.get("data", {}), meta.get("host", {})
    model = str(df["model"].iloc[0])
    ft = float(cfg.get("finetune_epochs", df["finetune_epochs"].iloc[0]))
    bs = int(cfg.get("batch_size", 128))
    steps = data.get("steps_per_epoch")
    ft_steps = None
    if "finetune_steps" in df and df["finetune_steps"].notna().any():
        ft_steps = int(df["finetune_steps"].dropna().iloc[0])
    s = cfg.get("search", {})
    pruned = df[df["method"] != "ceiling"]
    budgets = ", ".join(f"{b:g}" for b in sorted(pruned["budget"].unique(), reverse=True))
    if not budgets:  # only the ceiling so far
        budgets = "none yet (only the ceiling row)"
    lines = []
    if cfg.get("quick") or bool(df.get("quick", pd.Series([False])).astype(str).eq("True").any()):
        lines.append(
            "**Smoke test (`--quick`) on a tiny subset: these numbers test the harness, they are not results.**\n"
        )
    top1 = data.get("top1_base", float(df["top1_base"].dropna().iloc[0]) if df["top1_base"].notna().any() else math.nan)
    lines.append(
        f"- **Model and data:** {_name(model)} on {df['dataset'].iloc[0]} ({data.get('train', '?')} train / "
        f"{data.get('holdout', '?')} held-out / {data.get('test', '?')} test images), weights "
        f"`{Path(str(data.get('weights', '?'))).name}`, baseline top-1 **{_num(top1, 2)}%**, "
        f"{_num(data.get('macs_base', df['macs_base'].iloc[0]) / 1e6, 2)}M MACs. Budgets: {budgets}"
        f"{'' if pruned.empty else ' of the baseline ' + _BUDGET_WORDS.get(cfg.get('budget_type', 'macs'), 'params')}."
    )
    ft_text = (
        "**none**"
        if ft == 0
        else f"**{_epochs(ft)} epoch{'s' if ft != 1 else ''}**"
        + (f" ({_plural(ft_steps, 'step')} of {bs})" if ft_steps else "")
    )
    refit = int(cfg.get("reconstruct_images") or 0)
    refit_text = (
        f"every cut lcp makes refitted by least squares to the unpruned network's layer outputs on {refit:,} "
        "training images (`lcp prune --reconstruct-images`; the peers' cuts are not), then "
        if refit
        else ""
    )
    if ft == 0:
        lines.append(
            f"- **Identical for every method:** the same data split (holdout seed 0), {refit_text}BatchNorm "
            "recalibration on "
            f'{cfg.get("recal_batches", 20)} train batches of {bs}, then top-1 on the test split ("BN recal"); no '
            "fine-tuning: this table compares the cuts before any recovery."
        )
    else:
        lines.append(
            f"- **Identical for every method:** the same data split (holdout seed 0), {refit_text}BatchNorm "
            "recalibration on "
            f'{cfg.get("recal_batches", 20)} train batches of {bs}, then top-1 on the test split ("BN recal"); then '
            f"fine-tuning for {ft_text}: SGD Nesterov, momentum 0.9, lr {cfg.get('lr', 0.01):g} cosine to 0, weight "
            f"decay 5e-4, batch {bs}, random crop and flip, the row's seed for the data order"
            + (
                ", distilling from the unpruned network (loss 0.1 CE + 0.9 T^2 KL, T = 4; the ceiling from a frozen "
                "copy of itself)"
                if cfg.get("kd")
                else ""
            )
            + '; then top-1 again ("fine-tuned").'
            + (f" One epoch is {_plural(steps, 'step')}." if steps else "")
        )
    r = cfg.get("round_to", 1)
    lines[-1] += (
        " Every cut keeps any channel width (`round_to` 1; `lcp prune`'s default is 16 since 2026-12-05)."
        if str(r) == "1"
        else f" Every cut keeps widths in multiples of {r} (halved per narrow group, `round_to`)."
    )
    if "lcp" in set(df["method"]):
        sb = meta.get("search_budgets")  # runs before 2026-11-23 searched at the lowest budget only
        searched_at = (
            f"at budget {_num(s.get('search_budget') or min(df['budget']), 2)}"
            if not sb
            else f"at budget {_num(sb[0], 2)}"
            if len(sb) == 1
            else "at the row's budget"
            if meta.get("searched_separately")
            else "averaging the fitness over budgets " + " and ".join(_num(b, 2) for b in sb)
        )
        reuse = " and budget" if meta.get("searched_separately") else ", reused for every budget"
        if s.get("search_preset", "legr") == "fast":
            kind = (
                "lcp prune's default `fast` search (a measured per-layer sensitivity, then "
                f"{_fast_candidates(s, df)} candidates of a refining evolution"
                + ("" if s.get("search_time") == 0 else ", stopped after 120 s")
                + ")"
            )
        else:
            kind = (
                f"LeGR search ({s.get('optimizer', 'legr')}, {s.get('candidates') or 400} candidates, population "
                f"{s.get('population') or 64}, tournament {s.get('tournament') or 16})"
            )
        lines.append(
            f"- **lcp:** {kind}; fitness: cross-entropy on {s.get('eval_images', 1000)} held-out images after BN "
            f"recalibration, {searched_at}, once per seed{reuse}; its time is the `search` column "
            "(the sensitivity measurement included). `global`, `uniform`, `random`: the same lcp walk with identity "
            "compensation, one keep ratio per group, a seeded random order."
        )
    if "ceiling" in set(df["method"]):
        lines.append(
            "- **ceiling:** the unpruned network through the same BN recalibration and fine-tuning (same epochs, "
            "schedule and seed; "
            + ("distilled from a frozen copy of itself" if cfg.get("kd") else "no distillation")
            + "): the honest reference for a pruned network, since the shared "
            "checkpoints are under-trained and any fine-tuning also improves them. `drop vs ceiling` is the ceiling's "
            "fine-tuned top-1 minus the row's."
        )
    agents = {**AGENT_DEFAULTS, **(cfg.get("agents") or {})}
    found = [m for m in AGENT_METHODS if m in set(df["method"])]
    if found:
        episodes = agents["episodes"] or DEFAULT_EPISODES[found[0]]
        sb = s.get("search_budget")
        where = f"once per seed at budget {_num(sb, 2)}, cut at every budget" if sb else "searched per budget and seed"
        lines.append(
            f"- **{', '.join(found)}:** the DDPG agent of `lcp prune --method lfgcl|amc` (docs/agents.md): one keep "
            f"ratio per channel group, {_plural(episodes, 'episode')} (the uniform cut and, for residual networks, "
            f"the uniform cut with the streams whole first, then {agents['warmup_episodes']} warm-up episodes "
            f"around the better of them), {where}, with the highest-scored channels of each group; reward on 256 "
            f"held-out images after BN recalibration: minus the KL divergence to the unpruned network's outputs "
            f"(lfgcl, label-free) or minus the cross-entropy (amc); the 5 best episodes and the starting cuts are "
            f"re-scored on 1,000 held-out images; its time is the `search` column."
        )
    found = [m for m in CONNECTION_METHODS if m in set(df["method"])]
    if found:
        episodes = agents["episodes"] or DEFAULT_EPISODES[found[0]]
        lines.append(
            f"- **{', '.join(found)}:** DenseNet connection pruning of `lcp prune --method ads|lwp` "
            f"(docs/connections.md): an LSTM controller trained with REINFORCE keeps or drops every dense "
            f"connection, {_plural(episodes, 'episode')} per budget and seed; reward: held-out top-1 after BN "
            f"recalibration (ads), plus 0.1 x (1 - cost ratio) (lwp, which need not fill the budget). The network "
            f"keeps its channel widths and loses connections (a layer nobody reads any more is dropped); it is "
            f"verified against the masked original, and its MACs and params are lcp's count of the pruned "
            f"network, as `lcp prune` reports them. Its search is the `search` column."
        )
    if "torch_pruning" in set(df["method"]):
        tpv = host.get("torch_pruning") or "not installed"
        lines.append(
            f"- **torch_pruning:** Torch-Pruning {tpv}, `MagnitudePruner` with `MagnitudeImportance(p=2)`, "
            f"`global_pruning=True`, classifier ignored; its channel `pruning_ratio` is bisected until lcp's MACs "
            f"count of the result is at or just under the same target; the result must run (forward) before it "
            f"is recalibrated, fine-tuned and evaluated like the others."
        )
    if "modelopt" in set(df["method"]):
        mo = {"channel_divisor": 4, "score_images": 1000, "recal_batches": 10, **(cfg.get("modelopt") or {})}
        lines.append(
            f"- **modelopt:** NVIDIA Model Optimizer {host.get('modelopt') or '(version not recorded)'}, "
            f'`modelopt.torch.prune.prune(mode="fastnas")` with `channel_divisor` {mo["channel_divisor"]}, '
            f"its FLOPs constraint at the budget (scaled and re-run while lcp's MACs count of the result is over "
            f"the target or more than 1% under it); its score: top-1 on {mo['score_images']} held-out images after "
            f"BN recalibration on {mo['recal_batches']} train batches, the held-out split lcp's search uses. Its "
            f"search (the per-layer sensitivity measurement and the bisection) is the `search` column. It runs "
            f"from a venv of its own: `python -m venv venv-mo && venv-mo/bin/pip install torch==2.14.1 "
            f"torchvision==0.29.1 -e '.[modelopt]'`, then `venv-mo/bin/python benchmarks/compare.py ... --methods "
            f"modelopt` (other rows of the same CSV may come from lcp's own venv). A run stopped during the "
            "sensitivity measurement resumes from the widths its `fastnas_search.pth` holds: the `search` column "
            "then counts the run that finished it, not the earlier ones."
        )
        mo_rows = df[(df["method"] == "modelopt") & (df["status"].astype(str) == "ok")]
        if (mo_rows["search_s"] < 60).any():
            lines[-1] += (
                " A `search` under a minute: the row's sensitivities were measured by an earlier run of the same "
                "model, held-out scoring and seed (another table's), and its `fastnas_search.pth` copied into this "
                "run's work folder; the column then holds the bisection only."
            )
    batches = " and ".join(str(b) for b in cfg.get("latency_batches", [1, 64]))
    gpu = cfg.get("device", "cpu") == "cuda"
    cut = df[(df["method"] != "ceiling") & (df["status"].astype(str) == "ok")]
    lat = pd.to_numeric(cut.get("latency_pruned_ms", pd.Series(index=cut.index, dtype=float)), errors="coerce")
    timed, all_timed = bool(lat.notna().any()), len(cut) > 0 and bool(lat.notna().all())
    # the config is the last (or, merged, the first) run's: a run that added untimed rows, or a merge of timed and
    # untimed runs, leaves rows of both kinds, so the rows decide which sentence is true
    if timed and (cfg.get("latency_repeats", 20) == 0 or not all_timed):
        lines.append(
            f"- **Latency:** rows with latency columns were timed by an earlier run of this recipe (medians of "
            f"forward passes at batch {batches}, base and pruned back to back; pruned / base, below 1 is faster); "
            f"rows with `-` ran beside other jobs and were not timed."
        )
    elif timed:
        threads = sorted({int(t) for t in pd.to_numeric(cut.get("threads", pd.Series()), errors="coerce").dropna()})
        lines.append(
            f"- **Latency:** median of {cfg.get('latency_repeats', 20)} forward passes at batch {batches}, "
            + ("on the GPU" if gpu else f"{'/'.join(map(str, threads or [cfg.get('threads', 1)]))} thread(s)")
            + ", base and pruned timed back to back for every row; the columns are pruned / base (below 1 is "
            "faster)."
        )
    elif cut.empty:
        lines.append("- **Latency:** no pruned network in this table to time.")
    else:
        lines.append(
            "- **Latency:** not measured here (the rows ran as parallel jobs on one machine, so their timings "
            "would say nothing); docs/latency.md has the speed figures."
        )
    searches = sorted(set(df.loc[(df["method"] == "lcp") & (df["status"].astype(str) == "ok"), "search_s"].round(0)))
    spread = (
        f" (the {len(searches)} searches of this table, same size, other seeds, took {searches[0]:.0f} s "
        f"to {searches[-1]:.0f} s)"
        if len(searches) > 1
        else ""
    )
    machine = f"{host.get('cpu', '?')}, {host.get('cores', '?')} cores shared with other jobs"
    if gpu:
        work = "evaluation and latency" if timed else "and evaluation"
        machine = (
            f"{host.get('gpu') or 'a CUDA GPU'} (searches, training{',' if 'latency' in work else ''} {work}), "
            + machine
        )
    runs = _runs(meta, df)  # those that made the rows: their dates and time
    if _unfinished(runs):  # no run time recorded: the rows' own seconds
        row_s = float(df[[c for c in ROW_SECONDS if c in df.columns]].fillna(0).to_numpy().sum())
        took = (
            "a run that made them is still going or was cut off; the rows' own work, interrupted earlier runs "
            f"included, took {row_s / 60:.0f} min "
        )
    elif all_timed:
        took = f"wall time of the comparison {_wall(runs) / 60:.0f} min "
    else:
        took = f"run time of the comparison {_wall(runs) / 60:.0f} min summed over its " + (
            "runs " if timed else "parallel runs "
        )
    lines.append(
        f"- **Machine and time:** {machine}, "
        f"torch {host.get('torch', '?')}; {_dates(runs, df)}; "
        + took
        + f"({len(df)} row{'s' if len(df) != 1 else ''}). Wall times depend on the load other jobs put on the "
        + f"machine{spread}: read them as "
        + "orders of magnitude"
        + ("; the latency ratios are robust to it because base and pruned are timed together." if timed else ".")
    )
    return "\n".join(lines)


UNDER_BUDGET = 0.01  # MACs ratio this far below the budget: the row had less compute than the budget allows


def findings_text(s: pd.DataFrame, tuned: bool = True, macs_budget: bool = True) -> str:
    """Per budget: the best fine-tuned method, and lcp against the plain global ranking, with the seed noise
    (``tuned`` False: a table without fine-tuning, BN recalibration only); with a MACs budget, the methods that
    kept clearly fewer MACs than it (compared at the budget, they ran with less compute than the others)."""
    if s.empty:
        return ""
    out = []
    for budget in sorted(set(s.loc[s["method"] != "ceiling", "budget"]), reverse=True):
        g = s[s["budget"] == budget]
        best = g.loc[g["top1_pruned"].idxmax()]
        best_noft = g.loc[g["top1_pruned_noft"].idxmax()]
        line = (
            f"At budget {budget:g}: "
            + (f"best after fine-tuning `{best['method']}` ({best['top1_pruned']:.2f}%), " if tuned else "")
            + f"best after BN recalibration alone `{best_noft['method']}` ({best_noft['top1_pruned_noft']:.2f}%)"
        )
        lcp_r, glob = g[g["method"] == "lcp"], g[g["method"] == "global"]
        if not lcp_r.empty and not glob.empty:
            d, d0 = (paired_difference(g, col, "global") for col in ("top1_pruned", "top1_pruned_noft"))
            sds = [
                float(v)
                for v in (lcp_r["top1_pruned_sd"].iloc[0], glob["top1_pruned_sd"].iloc[0])
                if math.isfinite(float(v))
            ]
            noise = (
                f" (seed-to-seed standard deviation up to {max(sds):.2f})" if sds else " (one seed: no noise estimate)"
            )
            after = f", {d:+.2f} after fine-tuning" if tuned else ""
            line += f"; lcp minus global: {d0:+.2f} points after BN recalibration{after}{noise}"
        if not lcp_r.empty and "vs_ceiling" in lcp_r:
            gap = float(lcp_r["vs_ceiling"].iloc[0])
            line += f"; lcp is {gap:.2f} points below the ceiling (the unpruned network, same recovery)"
        if not lcp_r.empty:
            line += lead_text(g, "top1_pruned" if tuned else "top1_pruned_noft")
        under = g[(g["method"] != "ceiling") & (g["macs_ratio"] < budget - UNDER_BUDGET)] if macs_budget else g[:0]
        if not under.empty:
            line += "; " + ", ".join(f"`{r['method']}` kept {r['macs_ratio']:.3f}" for _, r in under.iterrows())
            line += (
                f" of the MACs, more than {UNDER_BUDGET:g} under the budget: it is compared here with less compute "
                "than the others, a disadvantage the table does not correct"
            )
        over = g[(g["method"] != "ceiling") & (g["macs_ratio"] > budget + 1e-6)] if macs_budget else g[:0]
        if not over.empty:
            line += "; " + ", ".join(f"`{r['method']}` kept {r['macs_ratio']:.4f}" for _, r in over.iterrows())
            line += " of the MACs, over the budget: it is compared here with more compute than the budget allows"
        out.append(f"- {line}.")
    return "Read from the table (generated):\n\n" + "\n".join(out)


def lead(g: pd.DataFrame, col: str) -> dict[str, list[tuple[str, float, float]]]:
    """lcp against every other method of one budget on ``col``, on the seeds the two rows share (paired: same
    data order): (method, mean of lcp minus it, seed spread) in ``ahead`` (by more than the spread: the largest
    of the two rows' standard deviations over those seeds and that of the per-seed differences), ``behind`` (not
    by that much) or ``single`` (at most one seed in common: no spread; with none, the difference of the means)."""
    lcp_r = g[g["method"] == "lcp"].iloc[0]
    out: dict[str, list[tuple[str, float, float]]] = {"ahead": [], "behind": [], "single": []}
    for _, r in g[~g["method"].isin(["lcp", "ceiling"])].iterrows():
        mine, theirs = lcp_r.get("by_seed_" + col), r.get("by_seed_" + col)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            shared = sorted(set(mine) & set(theirs))
            a, b = [mine[k] for k in shared], [theirs[k] for k in shared]
            if len(shared) >= 2:
                diff = np.subtract(a, b)
                d = float(diff.mean())
                spread = float(max(np.std(a, ddof=1), np.std(b, ddof=1), np.std(diff, ddof=1)))
            else:
                d = float(a[0] - b[0]) if shared else float(lcp_r[col] - r[col])
                spread = math.nan
        else:  # a summary without per-seed values: means and their standard deviations
            d = float(lcp_r[col] - r[col])
            sds = [float(v) for v in (lcp_r.get(col + "_sd"), r.get(col + "_sd")) if v is not None and math.isfinite(v)]
            spread = max(sds) if sds else math.nan
        if not math.isfinite(d):
            continue
        out["single" if not math.isfinite(spread) else "ahead" if d > spread else "behind"].append(
            (str(r["method"]), d, spread)
        )
    return out


def paired_difference(g: pd.DataFrame, col: str, method: str) -> float:
    """lcp minus ``method`` on ``col``, on the seeds the two rows share (``lead``'s difference)."""
    found = lead(g, col)
    return next((d for rows in found.values() for m, d, _ in rows if m == method), math.nan)


def lead_text(g: pd.DataFrame, col: str) -> str:
    """``lead`` as a clause of the findings."""
    found = lead(g, col)

    def names(rows: list[tuple[str, float, float]]) -> str:
        return ", ".join(
            f"`{m}` ({d:+.2f}" + (f", spread {sp:.2f})" if math.isfinite(sp) else ")") for m, d, sp in rows
        )

    parts = []
    if found["ahead"]:
        parts.append("ahead by more than the seed spread of " + names(found["ahead"]))
    if found["behind"]:
        parts.append("**not ahead by more than the seed spread** of " + names(found["behind"]))
    if found["single"]:
        parts.append("at most one seed in common (no spread to compare with) against " + names(found["single"]))
    if not parts:
        return ""
    what = "after fine-tuning" if col == "top1_pruned" else "after BN recalibration"
    return f"; lcp {what} (lcp minus the method): " + "; ".join(parts)


def standing_text(tables: dict[str, tuple[pd.DataFrame, pd.DataFrame, dict]], titles: dict[str, str]) -> str:
    """One line per table and budget with an lcp row: lcp's top-1, its gap to the ceiling, and the methods it
    leads by more than the seed spread, by less, or on one seed only (the findings under each table, gathered)."""
    rows = []
    for key, (df, s, meta) in tables.items():
        if s.empty or "lcp" not in set(s["method"]):
            continue
        search = (meta.get("config") or {}).get("search") or {}
        how = (
            "default (fast preset)"
            if search.get("search_preset") == "fast"
            else f"LeGR, {search.get('candidates') or 400} candidates"
        )
        col = "top1_pruned" if float(df["finetune_epochs"].max()) > 0 else "top1_pruned_noft"
        for budget in sorted(set(s.loc[s["method"] == "lcp", "budget"]), reverse=True):
            g = s[s["budget"] == budget]
            r = g[g["method"] == "lcp"].iloc[0]
            found = lead(g, col)
            gap = float(r.get("vs_ceiling", math.nan)) if col == "top1_pruned" else math.nan

            def names(key: str, found: dict = found) -> str:
                return ", ".join(f"{m} {d:+.2f}" for m, d, _ in found[key]) or "-"

            rows.append(
                [
                    titles[key],
                    how,
                    f"{budget:g}",
                    f"{_pm(r, col, 2)} (seeds {r['seeds']})",
                    _num(gap, 2),
                    names("ahead"),
                    names("behind"),
                    names("single"),
                ]
            )
    if not rows:
        return ""
    header = [
        "table",
        "lcp's search",
        "budget",
        "lcp top-1 (%)",
        "below the ceiling (pts)",
        "lcp ahead by more than the seed spread",
        "not ahead by more than the spread",
        "at most one seed in common",
    ]
    return (
        "Where lcp stands, gathered from the tables below (generated): top-1 after the table's recovery (before "
        "it for the tables without fine-tuning), lcp minus each method in points, paired on the seeds both rows "
        "have (the gap to the ceiling likewise); the seed spread is the largest standard deviation over those "
        "seeds: of lcp's row, of the other row, and of their per-seed differences.\n\n"
        + md_table(header, rows, right={2, 4})
    )


def errors_text(df: pd.DataFrame) -> str:
    bad = _order(df[df["status"].astype(str) != "ok"])
    if bad.empty:
        return ""
    seen: dict[str, list[str]] = {}
    for _, r in bad.iterrows():
        seen.setdefault(f"`{r['method']}`: {r['status']}", []).append(f"budget {r['budget']:g}, seed {int(r['seed'])}")
    items = [f"- {what} ({'; '.join(where)})" for what, where in seen.items()]
    text = "Rows without a result:\n\n" + "\n".join(items)
    model = str(df["model"].iloc[0])
    tp_broken = bad[(bad["method"] == "torch_pruning") & bad["status"].astype(str).str.contains("broken network")]
    if model in OPTION_A and not tp_broken.empty:
        text += "\n\n" + OPTION_A_NOTE
    return text


def _row(s: pd.DataFrame, method: str, target: float) -> pd.Series | None:
    g = s[s["method"] == method]
    if g.empty:
        return None
    return g.iloc[(g["budget"] - target).abs().argsort().iloc[0]]


def published_text(tables: dict[str, tuple[pd.DataFrame, pd.DataFrame, dict]]) -> str:
    """The comparison with LeGR's and AMC's ResNet-56 numbers, with our measured numbers inserted."""
    pub = "; ".join(
        f"{p['method']} {p['base']:.1f} → {p['pruned']:.1f}"
        + (f" ± {p['spread']:.1f}" if p["spread"] else "")
        + f" (−{p['base'] - p['pruned']:.1f} points) at {p['flops']:.0%} of the FLOPs after {p['epochs']} epochs of "
        "fine-tuning"
        for p in PUBLISHED
    )
    intro = f"Published on ResNet-56 / CIFAR-10 (LeGR, CVPR 2020, Table 1): {pub}."
    first = next((k for k in tables if k.split(" ")[0] == "resnet56"), None)  # the page's order: default recovery
    if first is not None:
        df, s, meta = tables[first]
        model, where = "resnet56", f"the table {_title(first, df, meta)!r}" if " " in first else "this ResNet-56 table"
    elif tables:
        model = next(iter(tables))
        df, s, meta = tables[model]
        where = f"the {_name(model)} table (no ResNet-56 comparison has been run for this page yet)"
    else:
        return intro + " No comparison has been run for this page yet."
    r_lcp, r_glob = _row(s, "lcp", 0.5), _row(s, "global", 0.5)
    if r_lcp is None:
        return intro + f" {where.capitalize()} has no lcp row to set beside them."
    ft = float(r_lcp["finetune_steps"]) if "finetune_steps" in r_lcp else math.nan
    ft_ep = float(df["finetune_epochs"].iloc[0])
    base = float(r_lcp["top1_base"])
    text = [intro]
    text.append(
        f"Ours, from {where}: lcp at {r_lcp['macs_ratio']:.1%} of the MACs goes {base:.2f} → "
        f"{r_lcp['top1_pruned_noft']:.2f} after BN recalibration alone and → {_pm(r_lcp, 'top1_pruned', 2)} after "
        f"{_epochs(ft_ep)} epoch{'s' if ft_ep != 1 else ''} of fine-tuning"
        + (f" ({_plural(int(ft), 'step')})" if math.isfinite(ft) and ft_ep > 0 else "")
        + f", a drop of {_pm(r_lcp, 'drop', 2)} points"
        + (
            f"; the plain global ranking ends at {_pm(r_glob, 'top1_pruned', 2)} ({_pm(r_glob, 'drop', 2)})"
            if r_glob is not None
            else ""
        )
        + "."
    )
    gaps = " and ".join(
        f"{abs(p['base'] - base):.1f} points {'below' if p['base'] > base else 'above'} {p['method']}'s {p['base']:.1f}"
        for p in PUBLISHED
    )
    if ft_ep > 0:
        ratio = ", ".join(f"{ft_ep / p['epochs']:.2%} of {p['method']}'s {p['epochs']}" for p in PUBLISHED)
        ft_words = f"our fine-tuning is {_epochs(ft_ep)} epoch{'s' if ft_ep != 1 else ''} ({ratio})"
    else:
        ft_words = "we do not fine-tune at all"
    caveat = (
        f"The numbers are not comparable as equals: our baseline is the shared checkpoint on the JPEG "
        f"CIFAR-10 split ({base:.2f}%, {gaps}), {ft_words}, and the published networks were "
        f"trained and evaluated on the original CIFAR-10 pickles."
    )
    if model != "resnet56":
        caveat += (
            f" {_name(model)} is also a smaller network than ResNet-56, with less redundancy to prune, so its "
            f"drop is no estimate of ResNet-56's."
        )
    text.append(caveat)
    text.append(
        "What this page does measure fairly is the ranking between methods under one identical recipe, "
        "in each table above."
    )
    return " ".join(text)


# ------------------------------------------------------------------------------------------------------ plot


def plot(tables: dict[str, tuple[pd.DataFrame, pd.DataFrame, dict]], path: Path) -> None:
    """Top-1 against MACs ratio per method: filled = fine-tuned, hollow = BN recalibration only."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    n = max(1, len(tables))
    fig = Figure(figsize=(5.2 * n, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (model, (df, s, meta)) in zip(axes, tables.items()):
        ft = _epochs(df["finetune_epochs"].iloc[0])
        if not s.empty:
            for method in [m for m in METHOD_ORDER if m in set(s["method"])] + sorted(
                set(s["method"]) - set(METHOD_ORDER)
            ):
                g = s[s["method"] == method].sort_values("macs_ratio")
                c = COLOURS.get(method, "#000000")
                ax.errorbar(
                    g["macs_ratio"],
                    g["top1_pruned"],
                    yerr=g["top1_pruned_sd"].fillna(0),
                    color=c,
                    marker="o",
                    ms=6,
                    lw=1.4,
                    capsize=3,
                    label=method,
                )
                ax.errorbar(
                    g["macs_ratio"],
                    g["top1_pruned_noft"],
                    yerr=g["top1_pruned_noft_sd"].fillna(0),
                    color=c,
                    marker="o",
                    ms=6,
                    mfc="white",
                    lw=0.8,
                    ls=":",
                    capsize=3,
                )
            ax.axhline(float(s["top1_base"].iloc[0]), color="black", ls="--", lw=0.8)
            ax.annotate(
                f"baseline {float(s['top1_base'].iloc[0]):.2f}%",
                (0.02, float(s["top1_base"].iloc[0])),
                xycoords=("axes fraction", "data"),
                va="bottom",
                fontsize=8,
            )
        failed = sorted(set(df.loc[df["status"].astype(str) != "ok", "method"]) - set(s.get("method", [])))
        for method in failed:  # listed in the legend, so a missing curve is never silent
            ax.plot(
                [],
                [],
                color=COLOURS.get(method, "#000000"),
                marker="x",
                ls="none",
                label=f"{method}: no result (see table)",
            )
        quick = " [--quick smoke test]" if meta.get("config", {}).get("quick") else ""
        ax.set_title(f"{_name(model)} / {df['dataset'].iloc[0]}, fine-tune {ft} ep{quick}", loc="left", fontsize=10)
        ax.set_xlabel("MACs ratio (pruned / baseline)")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8, framealpha=0.8)
    style = [
        Line2D([], [], color="#444444", marker="o", lw=1.4, label="fine-tuned"),
        Line2D([], [], color="#444444", marker="o", mfc="white", lw=0.8, ls=":", label="BN recalibration only"),
    ]
    fig.legend(handles=style, loc="outside upper right", ncols=2, fontsize=8, frameon=False)
    if not tables:
        axes[0].text(0.5, 0.5, "no comparison has been run", ha="center", va="center", transform=axes[0].transAxes)
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


# ---------------------------------------------------------------------------------------------------- report


def _recipe(path: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except Exception:
        return {}


def methods_not_run(df: pd.DataFrame, meta: dict) -> str:
    """The methods the table's recipe names that have no row yet (added to the recipe after the run)."""
    recipe = Path(str(meta.get("recipe", "")))
    recipe = recipe if recipe.is_absolute() else ROOT / recipe
    named = _recipe(recipe).get("methods", []) if recipe.is_file() else []
    budgets = sorted({float(b) for b in df.loc[df["method"] != "ceiling", "budget"]}, reverse=True)
    missing = []
    for m in (m for m in named if m != "ceiling"):
        absent = [b for b in budgets if df[(df["method"] == m) & (df["budget"] == b)].empty]
        if absent:  # a method the table has at some budgets only is named with the budgets it lacks
            at = "" if len(absent) == len(budgets) else " at " + " and ".join(f"{b:g}" for b in absent)
            missing.append(f"`{m}`{at}")
    if "ceiling" in named and "ceiling" not in set(df["method"]):
        missing.append("`ceiling`")
    if not missing:
        return ""
    names = ", ".join(missing)
    if (meta.get("config") or {}).get("device") == "cuda":
        return (
            f"Not run yet: {names} (named in `{_rel(recipe)}`; the lent GPU's time ran out first: their "
            f"compare.py commands with `--device cuda` add their rows and keep the rows above)."
        )
    return (
        f"Not run yet: {names} (named in `{_rel(recipe)}`; rerunning its compare.py command adds their rows and "
        f"keeps the rows above)."
    )


def _recipes_not_run(done_csvs: set[Path]) -> list[tuple[str, dict]]:
    out = []
    for recipe in sorted((ROOT / "recipes").glob("bench_*.yaml")):
        cfg = _recipe(recipe)
        csv = cfg.get("out")
        if csv and (ROOT / csv).resolve() not in done_csvs:
            out.append((str(recipe.relative_to(ROOT)), cfg))
    return out


def _recipe_sources(tables: dict, sources: dict[str, Path]) -> dict[str, list[str]]:
    """Per recipe (relative path), the page's CSVs whose run recorded that recipe (e.g. a GPU run of it
    written to another CSV)."""
    out: dict[str, list[str]] = {}
    for key, (_df, _s, meta) in tables.items():
        if meta.get("recipe"):
            recipe = Path(str(meta["recipe"]))
            out.setdefault(_rel(recipe if recipe.is_absolute() else ROOT / recipe), []).append(_rel(sources[key]))
    return out


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _budgets(df: pd.DataFrame) -> list[float]:
    """The budgets a table's pruned rows were cut to (the ceiling's budget 1 left out)."""
    return sorted({float(b) for b in df.loc[df["method"] != "ceiling", "budget"]})


def _search_words(search: dict) -> str:
    if search.get("candidates"):
        return f"search {search['candidates']} candidates"
    return f"the {search.get('search_preset', 'legr')} search preset"


def _title(key: str, df: pd.DataFrame, meta: dict) -> str:
    """A table's heading: model, data set, budgets, recovery, widths and device."""
    ft = _epochs(df["finetune_epochs"].iloc[0])
    return (
        f"{_name(key.split(' ')[0])} / {df['dataset'].iloc[0]}"
        + (
            f" at {' and '.join(f'{b:g}' for b in sorted(_budgets(df), reverse=True))} of the "
            f"{_BUDGET_WORDS.get(str(df['budget_type'].iloc[0]), df['budget_type'].iloc[0])}"
            if _budgets(df)
            else ""
        )
        + ", "
        + (
            (
                "before recovery (least-squares refit and BatchNorm recalibration)"
                if (meta.get("config") or {}).get("reconstruct_images")
                else "before recovery (BatchNorm recalibration only)"
            )
            if ft == "0"
            else f"fine-tuning {ft} epoch{'s' if ft != '1' else ''}"
            f"{', distilled' if (meta.get('config') or {}).get('kd') else ''}"
        )
        + (
            f", widths in multiples of {(meta.get('config') or {}).get('round_to')}"
            if (meta.get("config") or {}).get("round_to", 1) != 1
            else ""
        )
        + (
            f", on {(meta.get('host') or {}).get('gpu') or 'a GPU'}"
            if (meta.get("config") or {}).get("device") == "cuda"
            else ""
        )
    )


def build(csvs: list[Path], md_path: Path, png_path: Path, argv: list[str]) -> str:
    tables: dict[str, tuple[pd.DataFrame, pd.DataFrame, dict]] = {}
    sources: dict[str, Path] = {}
    for path in csvs:
        df, meta = load(path)
        if df.empty:
            continue
        model = str(df["model"].iloc[0])
        key = model if model not in tables else f"{model} ({path.stem})"
        tables[key] = (df, summarise(df), meta)
        sources[key] = path
    rank = {m: i for i, m in enumerate(MODEL_ORDER)}
    # per model, lcp prune's default recovery (distilled) first, then the longest fine-tuning
    tables = dict(
        sorted(
            tables.items(),
            key=lambda kv: (
                rank.get(kv[0].split(" ")[0], len(rank)),
                not (kv[1][2].get("config") or {}).get("kd"),
                -float(kv[1][0]["finetune_epochs"].iloc[0]),
                (kv[1][2].get("config") or {}).get("device", "cpu") != "cuda",  # the GPU's many-seed tables first
                -max(_budgets(kv[1][0]) or [0.0]),
                kv[0],
            ),
        )
    )
    plot(tables, png_path)

    try:
        png_ref = str(png_path.resolve().relative_to(md_path.resolve().parent))
    except ValueError:
        png_ref = str(png_path)
    report_cmd = " ".join(shlex.quote(a) for a in ["python", "benchmarks/report.py", *argv])
    out = [
        "# Benchmarks: lcp against other pruning methods",
        "",
        f"<!-- generated by `{report_cmd}` from the CSVs named below; do not edit by hand -->",
        "",
        "Every row of every table below comes from `benchmarks/compare.py` (one CSV row per method, budget and "
        "seed) and was turned into this page by `benchmarks/report.py`; rerun both to reproduce it. All "
        "methods of one table share the data split, the BatchNorm recalibration, the fine-tuning recipe and "
        "the seed; only what is pruned (channels or connections) differs. Top-1 is on the full test split "
        "unless the section says otherwise; `drop` is baseline minus fine-tuned top-1; ± is the sample standard "
        "deviation over the seeds listed.",
        "",
        METHODS_TEXT,
        "",
    ]
    measured = ", ".join(dict.fromkeys(_name(k.split(" ")[0]) for k in tables)) or "nothing yet"
    out += [f"Measured on this page: **{measured}**.", ""]
    titles = {key: _title(key, df, meta) for key, (df, _, meta) in tables.items()}
    standing = standing_text(tables, titles)
    if standing:
        out += [standing, ""]
    for key, (df, s, meta) in tables.items():
        out += [f"## {titles[key]}", ""]
        out += [setup_text(df, meta), ""]
        out += ["Commands:", "", "```bash", "source ../shared/offline-env.sh"]
        out += _commands(meta, sources[key]) + [report_cmd, "```", ""]
        out += [f"Results (`{_rel(sources[key])}`):", ""]
        out += [results_table(s) if not s.empty else "No row finished successfully.", ""]
        tuned, macs = float(df["finetune_epochs"].max()) > 0, str(df["budget_type"].iloc[0]) == "macs"
        found = findings_text(s, tuned=tuned, macs_budget=macs)
        if found:
            out += [found, ""]
        err = errors_text(df)
        if err:
            out += [err, ""]
        later = methods_not_run(df, meta)
        if later:
            out += [later, ""]
    out += [
        "## Accuracy against MACs",
        "",
        f"![top-1 against MACs ratio per method]({png_ref})",
        "",
        "Filled markers: after fine-tuning; hollow markers on dotted lines: after BatchNorm recalibration only; "
        "error bars: sample standard deviation over seeds; dashed line: the unpruned baseline.",
        "",
    ]
    out += ["## Published numbers", "", published_text(tables), ""]
    missing = _recipes_not_run({p.resolve() for p in sources.values()})
    ran_elsewhere = _recipe_sources(tables, sources)
    if missing:
        out += [
            "## Not run yet",
            "",
            "These recipes exist but the CSVs they write (their `out`) are not in this page; nothing is claimed "
            "for those runs (where another run of the recipe, written elsewhere, is in the page, it is named):",
            "",
        ]
        for recipe, cfg in missing:
            out.append(
                f"- `python benchmarks/compare.py --recipe {recipe}`: {_name(str(cfg.get('model')))}, budgets "
                f"{', '.join(str(b) for b in cfg.get('budgets', []))}, methods "
                f"{', '.join(cfg.get('methods', []))}, fine-tuning "
                f"{_epochs(cfg.get('finetune_epochs', 1))} epochs, "
                + _search_words(cfg.get("search") or {})
                + (
                    f", {(cfg.get('agents') or {}).get('episodes', 30)} agent episodes"
                    if set(cfg.get("methods") or []) & {*AGENT_METHODS, *CONNECTION_METHODS}
                    else ""
                )
                + (f", on {cfg['device']}" if cfg.get("device", "cpu") != "cpu" else "")
                + "."
                + (
                    " In this page from another run of it: " + ", ".join(f"`{c}`" for c in ran_elsewhere[recipe]) + "."
                    if recipe in ran_elsewhere
                    else ""
                )
            )
        out.append("")
    text = "\n".join(out)
    _atomic_write(md_path, lambda tmp: tmp.write_text(text))
    return text


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", nargs="+", type=Path, help="comparison CSVs (default: benchmarks/results/compare_*.csv)")
    p.add_argument("--md", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--png", type=Path, default=ROOT / "docs" / "benchmarks.png")
    args = p.parse_args(argv)
    csvs = args.csv or sorted(RESULTS.glob("compare_*.csv"))
    missing = [c for c in csvs if not c.is_file()]
    if missing:
        print(f"report: no such file {missing[0]}", file=sys.stderr)
        return 2
    build(csvs, args.md, args.png, argv)
    print(f"wrote {args.md} and {args.png} from {len(csvs)} CSV(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Compare pruning methods on one model under one recipe: lcp, global, uniform, random, the agent methods
lfgcl and amc, the DenseNet connection methods ads and lwp, Torch-Pruning, and the ceiling (the unpruned
network through the same recalibration and recovery: one row per seed, budget 1).

For a model, a list of budgets, a list of methods and seeds (all from a YAML recipe in ``recipes/bench_*.yaml``),
every method gets the identical data split (lcp's holdout split, seed 0), the identical BatchNorm recalibration
and the identical fine-tuning recipe and seed, and one CSV row is written per (method, budget, seed): the
``report.csv`` columns of ``lcp prune`` plus latency at batch 1 and 64 (base and pruned measured back to back,
so their ratio is what counts), wall times and a ``status`` (``ok``, ``error: <first line>`` or ``skipped: ...``).

What is shared, as in ``lcp prune --budgets``: the channel graph is built once per model, the learned
compensation is searched once per (model, seed) at the recipe's budgets by method lcp's own ``learn`` (the
recipe's ``search:`` section: ``search_preset``, legr for the recipes written before presets, or fast, lcp
prune's default) and reused for every budget (learn once, prune many; ``search_s`` is that one search's time,
the sensitivity measurement included, repeated on its lcp rows). The lcp-family cuts use
``lcp.cut.pruner.prune_graph``. ``lfgcl`` / ``amc`` learn keep ratios per group with lcp's DDPG agent
(the method's ``learn``, the recipe's ``agents:`` episodes) once per (method, seed, budget), or once per (method,
seed) at ``search.search_budget`` when the recipe sets it, and cut with them. ``ads`` / ``lwp`` (DenseNets) search
the dense connections per (budget, seed) with ``controllers.run_connection_prune`` (search, verified cut, MACs and
params from the connection cost model as in its ``report.csv``), then the saved network is reloaded (``lcp.load``)
and treated like every other row. Searches score candidates on the held-out split only. ``torch_pruning`` is
Torch-Pruning's global magnitude pruner (``tp.pruner.MagnitudePruner``, ``MagnitudeImportance(p=2)``,
``global_pruning=True``, classifier ignored) with its channel ``pruning_ratio`` bisected until ``lcp.count_macs``
of the result is at or just under the same MACs target; a network it breaks, or any exception, gives an error
row with the reason.

Rows are appended to the CSV atomically as they finish; a rerun skips rows already present (``--retry-errors``
re-runs error rows), so a long run can be interrupted and resumed, and methods added to a recipe only add rows;
a row's fine-tuning checkpoints every epoch in ``--work``, so an interrupted row resumes from its last finished epoch.
A CSV holding rows made with other settings is refused (``--overwrite`` starts over): each row's ``config`` is
a hash of the settings that decide it (the ``agents:`` section counts for the search methods' rows only), and
so is one whose lcp rows searched another number of candidates than the recipe's search (a preset is hashed by
its name, not its numbers; ``searched_otherwise``), and so is one whose rows were cut from other baseline weights
(each row's ``base_weights`` digest, ``other_baselines``: a network trained again is another baseline). The
commands and settings of every invocation go to ``<out>.meta.json``, which ``benchmarks/report.py`` reads.
``--device cuda`` (or ``device: cuda``) runs the searches, recalibration, evaluation, fine-tuning and latency
on the GPU.

    source ../shared/offline-env.sh
    python benchmarks/compare.py --recipe recipes/bench_resnet20.yaml
    python benchmarks/compare.py --recipe recipes/bench_resnet56.yaml --quick      # smoke test, < 2 minutes
    python benchmarks/compare.py --recipe recipes/bench_densenet40.yaml --device cuda

``--quick`` applies the recipe's ``quick:`` section (a few hundred images, a fraction of a fine-tuning epoch, a
handful of search candidates and episodes, ResNet-20 unless the recipe names another model) and writes to
``runs/compare/`` unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import secrets
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

import lcp
from lcp.engine.connection_importance import OUTPUT_SHARE
from lcp.errors import LcpError
from lcp.io import atomic_write_json, update_json, upsert_csv_row
from lcp.methods import Context, get_method
from lcp.methods.connections import CONNECTION_METHODS
from lcp.methods.ddpg import AGENT_METHODS
from lcp.methods.legr.method import PRESETS
from lcp.methods.options import episodes_for
from lcp.models import store
from lcp.report import REPORT_COLUMNS
from lcp.run.config import PruneConfig, read_yaml_mapping
from lcp.run.folder import RunLock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import first_line, mo_prune, mo_version, tp_prune, tp_version  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

LCP_METHODS = ("lcp", "global", "uniform", "random")  # one cut of lcp's ranking walk (prune_graph)
#: ``ceiling``: the unpruned network through the same recalibration and recovery (one row per seed, budget 1)
CEILING = "ceiling"
#: peers installed apart (``pip install -e '.[bench]'`` for Torch-Pruning; Model Optimizer in its own venv)
PEERS = ("torch_pruning", "modelopt")
METHODS = (*LCP_METHODS, *AGENT_METHODS, *CONNECTION_METHODS, *PEERS, CEILING)
#: The ``agents:`` settings that decide the rows of each search method (see ``signature``).
AGENT_KEYS: dict[str, tuple[str, ...]] = {
    **{m: ("episodes", "warmup_episodes") for m in AGENT_METHODS},
    **{m: ("episodes",) for m in CONNECTION_METHODS},
}

#: Recipe keys and their defaults. ``search``, ``agents``, ``torch_pruning`` and ``modelopt`` are nested
#: mappings; ``quick`` overrides any top-level key (and ``train_images`` / ``test_images`` subset sizes) under
#: ``--quick``.
DEFAULTS: dict[str, Any] = {
    "model": "resnet20",
    "data": None,  # None: the model's default data set (cifar10 for the zoo models)
    "checkpoint": None,  # None: $LCP_WEIGHTS/<model>_<data>.pt (or .safetensors), else the lcp cache's
    "input_size": None,  # [C, H, W]; None: the model's
    "budgets": [0.5, 0.3],
    "budget_type": "macs",
    "methods": [*LCP_METHODS, "torch_pruning"],
    "seeds": [0],
    "extra_seeds": None,  # {"seeds": [1], "methods": [...], "budgets": [...]}: more seeds for some rows
    "finetune_epochs": 1.0,  # may be fractional: the first steps of each shuffled epoch, cosine over them
    "lr": 0.01,
    "kd": False,  # distil from the unpruned network while fine-tuning (the ceiling distils from itself)
    "batch_size": 128,
    "recal_batches": 20,
    "reconstruct_images": 0,  # lcp prune --reconstruct-images: refit lcp's cuts to the original's outputs (0: off)
    "holdout": 5000,
    "importance": "l2",
    "aggregate": "mean",
    "min_ratio": 0.1,
    "round_to": 1,
    "train_images": None,  # a fixed random subset of the train split (None: all)
    "test_images": None,  # a fixed random subset of the test split (None: all)
    "search": {},
    "agents": {},
    "torch_pruning": {},
    "modelopt": {},
    "device": "cpu",  # cuda: searches, recalibration, evaluation, fine-tuning and latency on the GPU
    "threads": 1,
    "latency_batches": [1, 64],
    "latency_repeats": 20,
    "out": None,
    "quick": {},
}
SEARCH_DEFAULTS: dict[str, Any] = {
    "search_preset": "legr",  # what the rows written before presets used; new recipes say fast
    "search_time": None,  # None: the preset's (fast: 120 s); 0: none (a table needs the same count every run)
    "candidates": None,  # None: the preset's
    "optimizer": "legr",
    "compensation": "affine",
    "population": None,
    "tournament": None,
    "tau": 0,
    "label_free": False,
    "search_budget": None,
    "recal_batches": 4,
    "eval_images": 1000,
}
#: ``lcp prune``'s defaults: ``episodes`` for every search method (None: each method's own,
#: ``lcp.methods.options.DEFAULT_EPISODES``), ``warmup_episodes`` for lfgcl / amc.
AGENT_DEFAULTS: dict[str, Any] = {"episodes": PruneConfig.episodes, "warmup_episodes": PruneConfig.warmup_episodes}
TP_DEFAULTS: dict[str, Any] = {"p": 2, "max_steps": 20, "tolerance": 0.01}
#: Model Optimizer's FastNAS: candidates are scored by top-1 on ``score_images`` held-out images after
#: BatchNorm recalibration on ``recal_batches`` train batches; ``channel_divisor`` 4 (its default 32 leaves the
#: 16-channel layers of CIFAR ResNets no choice).
MO_DEFAULTS: dict[str, Any] = {"channel_divisor": 4, "score_images": 1000, "recal_batches": 10, "max_tries": 4}
_NESTED = {"search": SEARCH_DEFAULTS, "agents": AGENT_DEFAULTS, "torch_pruning": TP_DEFAULTS, "modelopt": MO_DEFAULTS}
#: nested sections that decide only their own method's rows (left out of every other row's signature)
_OWN_SECTIONS = ("agents", "modelopt")
QUICK_DEFAULTS: dict[str, Any] = {
    "model": "resnet20",
    "train_images": 256,
    "test_images": 256,
    "holdout": 128,
    "finetune_epochs": 0.5,
    "recal_batches": 2,
    "search": {"candidates": 4, "population": 2, "tournament": 2, "eval_images": 128, "recal_batches": 1},
    "agents": {"episodes": 3, "warmup_episodes": 2},
    "latency_repeats": 3,
    "extra_seeds": None,
}
#: Settings that do not change a row's result (so a resumed CSV may differ in them).
_NOT_IN_SIGNATURE = (
    "budgets",
    "methods",
    "seeds",
    "extra_seeds",
    "threads",
    "latency_batches",
    "latency_repeats",
    "out",
    "quick",
)
#: Settings added after the first CSVs were written, with the value they had then: in the signature only when
#: they differ from it, so those CSVs stay valid.
_ADDED = {"input_size": None, "device": "cpu", "kd": False, "reconstruct_images": 0}
#: search settings added later, with the value the rows written before them used (left out of signatures)
_ADDED_SEARCH = {"search_preset": "legr", "search_time": None}

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------------ settings


def _merge(base: dict, over: dict, where: str) -> dict:
    """``base`` updated by ``over``; unknown keys are refused; the nested sections merge key by key."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if k not in DEFAULTS:
            raise LcpError(f"{where}: unknown key {k!r} (known: {', '.join(sorted(DEFAULTS))})")
        if k in _NESTED:
            if not isinstance(v, dict):
                raise LcpError(f"{where}: {k} must be a mapping")
            bad = [kk for kk in v if kk not in _NESTED[k]]
            if bad:
                raise LcpError(f"{where}: unknown key {k}.{bad[0]} (known: {', '.join(sorted(_NESTED[k]))})")
            out[k] = {**_NESTED[k], **(out.get(k) or {}), **v}
        else:
            out[k] = v
    return out


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--recipe", required=True, help="YAML recipe (recipes/bench_*.yaml)")
    p.add_argument("--quick", action="store_true", help="smoke test: the recipe's quick: section (tiny subset)")
    p.add_argument("--out", help="CSV to write (default: the recipe's out; under --quick runs/compare/)")
    over = p.add_argument_group("overrides of the recipe")
    over.add_argument("--model")
    over.add_argument("--data", help="cifar10 or an ImageFolder root")
    over.add_argument("--checkpoint", help="state dict of the model's weights")
    over.add_argument("--budgets", type=_floats, help="comma-separated, e.g. 0.5,0.3")
    over.add_argument("--methods", type=_names, help=f"comma-separated subset of {','.join(METHODS)}")
    over.add_argument("--seeds", type=_ints, help="comma-separated, e.g. 0,1")
    over.add_argument("--finetune-epochs", type=float, help="fine-tuning epochs (fractions allowed; 0: none)")
    over.add_argument("--input-size", type=_ints, help="C,H,W (images are resized), e.g. 3,16,16")
    over.add_argument("--candidates", type=int, help="lcp search candidates")
    over.add_argument("--episodes", type=int, help="episodes of the lfgcl, amc, ads and lwp searches")
    over.add_argument("--warmup-episodes", type=int, help="random-action episodes of the lfgcl and amc agents")
    over.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="where the searches, recalibration, evaluation, fine-tuning and latency run",
    )
    over.add_argument("--holdout", type=int, help="held-out images carved from train (the search's fitness)")
    over.add_argument("--train-images", type=int, help="fixed random subset of the train split")
    over.add_argument("--test-images", type=int, help="fixed random subset of the test split")
    over.add_argument("--threads", type=int, help="torch threads for everything, latency included")
    over.add_argument(
        "--latency-repeats", type=int, help="timed forward passes per latency figure (0: no latency columns)"
    )
    p.add_argument(
        "--work",
        type=Path,
        default=ROOT / "runs" / "compare",
        help="folder for the search states and learned transforms (default: runs/compare)",
    )
    p.add_argument("--overwrite", action="store_true", help="delete an existing CSV made with other settings")
    p.add_argument("--retry-errors", action="store_true", help="re-run rows whose status is an error")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def read_recipe(path: str | Path) -> dict:
    """A benchmark recipe's settings, unchecked (``settings_from`` checks them)."""
    return read_yaml_mapping(path)


def settings_from(args: argparse.Namespace) -> dict:
    """Defaults <- recipe <- (the recipe's quick: section over QUICK_DEFAULTS, under --quick) <- command line."""
    recipe = read_recipe(args.recipe)
    cfg = _merge(DEFAULTS, {k: v for k, v in recipe.items() if k != "quick"}, f"recipe {args.recipe}")
    cfg = _merge(cfg, {k: {} for k in _NESTED}, "defaults")
    if args.quick:
        quick = dict(recipe.get("quick") or {})
        if "quick" in quick:
            raise LcpError(f"recipe {args.recipe}: quick cannot nest quick")
        nested = {k: {**QUICK_DEFAULTS[k], **(quick.pop(k, None) or {})} for k in ("search", "agents")}
        quick = {**{k: v for k, v in QUICK_DEFAULTS.items() if k not in nested}, **quick, **nested}
        if quick["model"] != cfg["model"]:
            quick.setdefault("checkpoint", None)  # the recipe's checkpoint is for its own model
        cfg = _merge(cfg, quick, f"recipe {args.recipe}, quick")
    for key in (
        "model",
        "data",
        "checkpoint",
        "input_size",
        "budgets",
        "methods",
        "seeds",
        "finetune_epochs",
        "holdout",
        "train_images",
        "test_images",
        "device",
        "threads",
        "latency_repeats",
    ):
        value = getattr(args, key)
        if value is not None:
            cfg[key] = value
    for section, key in (("search", "candidates"), ("agents", "episodes"), ("agents", "warmup_episodes")):
        if getattr(args, key) is not None:
            cfg[section][key] = getattr(args, key)
    cfg["quick"] = bool(args.quick)
    unknown = [m for m in cfg["methods"] if m not in METHODS]
    if unknown:
        raise LcpError(f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(METHODS)}")
    if cfg["device"] not in ("cpu", "cuda"):
        raise LcpError(f"device must be cpu or cuda, not {cfg['device']!r}")
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise LcpError("device cuda asked for, but no CUDA device is available")
    if cfg["input_size"] is not None:
        cfg["input_size"] = [int(v) for v in cfg["input_size"]]
    if cfg["budget_type"] not in ("macs", "params"):
        raise LcpError("budget_type must be macs or params (a latency budget is not comparable across methods)")
    for b in cfg["budgets"]:
        if not 0 < float(b) <= 1:
            raise LcpError(f"budget {b} is outside (0, 1]")
    ft = float(cfg["finetune_epochs"])
    if ft < 0:
        raise LcpError("finetune_epochs must be >= 0")
    cfg["finetune_epochs"] = int(ft) if ft.is_integer() else ft  # 1 and 1.0 are one setting
    refit = cfg["reconstruct_images"]
    if isinstance(refit, bool) or not isinstance(refit, int) or refit < 0:  # lcp prune's "auto" is not a setting here
        raise LcpError(f"reconstruct_images must be a whole number of images, 0 for none, not {refit!r}")
    if args.out:  # relative to the working directory; the recipe's out is relative to the repository
        out = Path(args.out)
    elif args.quick:
        out = ROOT / "runs" / "compare" / (Path(cfg["out"] or f"compare_{cfg['model']}.csv").stem + "_quick.csv")
    else:
        out = ROOT / (cfg["out"] or f"benchmarks/results/compare_{cfg['model']}.csv")
    cfg["out"] = str(out)
    return cfg


def signature(cfg: dict, method: str | None = None) -> str:
    """Hash of the settings that decide the numbers of ``method``'s rows (a CSV's rows must have their method's).

    Every row depends on the shared settings; a search method's rows also on its ``agents:`` settings, which no
    other row depends on, so adding a method to a recipe leaves the rows already written valid.
    """
    sig = {
        k: v
        for k, v in cfg.items()
        if k not in _NOT_IN_SIGNATURE and k not in _OWN_SECTIONS and not (k in _ADDED and v == _ADDED[k])
    }
    if method == "modelopt":
        sig["modelopt"] = cfg["modelopt"]
    if "search" in sig:
        sig["search"] = {k: v for k, v in sig["search"].items() if not (k in _ADDED_SEARCH and v == _ADDED_SEARCH[k])}
    if method in AGENT_KEYS:
        sig["agents"] = {k: cfg["agents"][k] for k in AGENT_KEYS[method]}
        sig["agents"]["episodes"] = episodes_for(method, sig["agents"]["episodes"])
    if method in CONNECTION_METHODS:  # rows searched from the slice-L1 prior (before 2026-12-07) are not current
        sig["prior"] = OUTPUT_SHARE
    text = json.dumps(sig, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def tasks(cfg: dict) -> list[tuple[str, float, int]]:
    """(method, budget, seed) in run order: by seed, then budget, then method (extra seeds last)."""
    out: list[tuple[str, float, int]] = []
    for s in cfg["seeds"]:
        if CEILING in cfg["methods"]:
            out.append((CEILING, 1.0, int(s)))
        for b in cfg["budgets"]:
            for m in cfg["methods"]:
                if m != CEILING:
                    out.append((m, float(b), int(s)))
    extra = cfg.get("extra_seeds") or {}
    if extra:
        methods = [m for m in extra.get("methods", cfg["methods"]) if m in cfg["methods"]]
        for s in extra.get("seeds", []):
            if CEILING in methods:  # the unpruned network has one row per seed, at budget 1
                out.append((CEILING, 1.0, int(s)))
            for b in extra.get("budgets", cfg["budgets"]):
                out += [(m, float(b), int(s)) for m in methods if m != CEILING]
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------------------------------- data


def _subset(x: torch.Tensor, y: torch.Tensor, n: int | None, idx: torch.Tensor | None = None) -> tuple:
    """A fixed random subset of ``n`` rows (generator seed 0, sorted), or everything."""
    if n is None or n >= len(x):
        return x, y, idx
    keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return x[keep], y[keep], (idx[keep] if idx is not None else None)


def prune_config(cfg: dict, **kw: Any) -> PruneConfig:
    """The recipe as ``lcp prune`` settings, for lcp's own functions (no fine-tuning: the harness does it)."""
    s, a = cfg["search"], cfg["agents"]
    same = (
        "model",
        "data",
        "checkpoint",
        "input_size",
        "budget_type",
        "importance",
        "aggregate",
        "lr",
        "batch_size",
        "recal_batches",
        "holdout",
        "round_to",
        "min_ratio",
        "threads",
        "device",
    )
    return PruneConfig(
        **{k: cfg[k] for k in same},
        search_budget=s["search_budget"],
        tau=s["tau"],
        episodes=a["episodes"],
        warmup_episodes=a["warmup_episodes"],
        finetune_epochs=0,
        **{"progress": False, **kw},
    )


def load(cfg: dict, log: Log) -> Any:
    """lcp's own loader (``pipeline.load_model_and_data``): model with weights, data bundle, holdout split."""
    from lcp.models.factory import default_checkpoint, model_info
    from lcp.run.load import load_model_and_data

    info = model_info(cfg["model"])
    spec = cfg["data"] or info.default_dataset
    if spec is None:
        raise LcpError(f"{cfg['model']} has no default data set: set data in the recipe or pass --data")
    dataset = "cifar10" if str(spec).lower() == "cifar10" else Path(spec).name
    if not cfg["checkpoint"] and default_checkpoint(info.name, dataset) is None:
        raise LcpError(
            f"no weights for {info.name} on {dataset}: set $LCP_WEIGHTS (source ../shared/offline-env.sh) "
            "or pass --checkpoint; a benchmark never trains its own baseline"
        )
    loaded = load_model_and_data(prune_config(cfg), log)
    b = loaded.bundle
    if cfg["train_images"] is not None or cfg["test_images"] is not None:
        tx, ty, ti = _subset(b.train_x, b.train_y, cfg["train_images"], b.train_idx)
        sx, sy, _ = _subset(b.test_x, b.test_y, cfg["test_images"])
        loaded.bundle = dataclasses.replace(
            b,
            train_x=tx,
            train_y=ty,
            train_idx=ti,
            test_x=sx,
            test_y=sy,
            source=b.source + f" [subset train={len(tx)} test={len(sx)}]",
        )
    return loaded


def _steps_per_epoch(bundle: Any, batch_size: int) -> int:
    drop = len(bundle.train_x) >= batch_size  # as lcp.training.train does: no last batch of 1 for BatchNorm
    n = len(bundle.train_x)
    return n // batch_size if drop else math.ceil(n / batch_size)


class _FirstSteps:
    """The first ``steps`` batches of one epoch's shuffled, augmented train loader (has a length)."""

    def __init__(self, loader: Any, steps: int):
        self.loader, self.steps = loader, steps

    def __len__(self) -> int:
        return min(self.steps, len(self.loader))

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i >= self.steps:
                return
            yield batch


def finetune(
    model: nn.Module,
    bundle: Any,
    cfg: dict,
    seed: int,
    progress: bool,
    teacher: nn.Module | None = None,
    ckpt: Path | None = None,
) -> tuple[int, int | None]:
    """``lcp.training.train.finetune`` with the recipe's settings; fractional epochs take the first steps of each epoch.
    ``teacher``: the unpruned network to distil from (used when the recipe says ``kd``). ``ckpt``: a checkpoint
    written after every epoch and resumed from when it exists, so a killed row loses at most one epoch.

    Returns the number of SGD steps taken, the epoch it resumed from (None: started afresh) and the seconds the
    epochs before it took.
    """
    from lcp.training.train import finetune as lcp_finetune

    epochs = float(cfg["finetune_epochs"])
    if epochs <= 0:
        return 0, None, 0.0
    bs = int(cfg["batch_size"])
    kw = dict(
        lr=cfg["lr"], batch_size=bs, seed=seed, progress=progress, device=cfg["device"], ckpt_path=ckpt, resume=True
    )
    if cfg["kd"]:
        if teacher is None:
            raise LcpError("kd: the recipe distils, but no teacher was given")
        kw["teacher"] = copy.deepcopy(teacher).eval()  # a frozen copy: the ceiling's student is the same network
    per = _steps_per_epoch(bundle, bs)
    if epochs.is_integer():
        done = lcp_finetune(model, bundle, epochs=int(epochs), **kw)
        return int(epochs) * per, *_resumed(done)
    n = math.ceil(epochs)
    steps = max(1, round(epochs * per / n))
    drop = len(bundle.train_x) >= bs

    def make(epoch: int) -> _FirstSteps:
        return _FirstSteps(
            bundle.loader("train", bs, shuffle=True, augment=True, seed=seed, epoch=epoch, drop_last=drop), steps
        )

    done = lcp_finetune(model, make, epochs=n, **kw)
    return n * steps, *_resumed(done)


def weights_digest(model: nn.Module) -> str:
    """A short hash of ``model``'s parameter and buffer names and values."""
    digest = hashlib.sha256()
    for name, t in model.state_dict().items():
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def other_baselines(rows: pd.DataFrame, digest: str | None, top1: float | None) -> list[str]:
    """The baselines, other than the one with weights digest ``digest`` and test top-1 ``top1``, that finished
    ``rows`` were made from: a row names its baseline by ``base_weights`` or, written before that column, by its
    ``top1_base`` (more than 0.05 points apart: another network). ``digest`` None: that of the first row with one."""
    if rows.empty or "top1_base" not in rows:
        return []
    if "status" in rows:
        rows = rows[rows["status"].astype(str) == "ok"]
    column = rows["base_weights"] if "base_weights" in rows else [None] * len(rows)
    weights = ["" if pd.isna(w) or str(w) in ("", "nan") else str(w) for w in column]
    tops = pd.to_numeric(rows["top1_base"], errors="coerce").tolist()
    if not tops:
        return []
    if digest is None:
        digest = next((w for w in weights if w), None)
    if top1 is None:
        top1 = tops[weights.index(digest)] if digest in weights else tops[0]
    other = set()
    for w, t in zip(weights, tops):
        if w and w != digest:
            other.add(f"weights {w}")
        elif not w and abs(t - top1) > 0.05:
            other.add(f"baseline top-1 {t:.2f}%")
    return sorted(other)


def _resumed(done: dict) -> tuple[int | None, float]:
    """The epoch a fine-tuning resumed from and the seconds its earlier run(s) took to get there."""
    k = done["resumed_from"]
    return k, (float(done["history"][k - 1]["seconds"]) if k else 0.0)


# ------------------------------------------------------------------------------------------------------ CSV


def read_rows(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame()
    # a signature of digits only is still a string, and so is a search-budgets cell of one budget ("0.5")
    return pd.read_csv(path, dtype={"config": str, "search_budgets": str})


def append_row(path: Path, row: dict) -> None:
    """Append one row (replacing an earlier row of the same method, budget and seed, e.g. a retried error),
    atomically."""
    upsert_csv_row(path, row, keys=("method", "budget", "seed"), first=COLUMNS)


COLUMNS = [
    *REPORT_COLUMNS,
    "latency_base_ms",
    "latency_pruned_ms",
    "speedup",
    "latency64_base_ms",
    "latency64_pruned_ms",
    "speedup64",
    "status",
]
#: What a connection row takes from ``run_connection_prune``'s report (the rest is measured like every row).
CONNECTION_COLUMNS = (
    "search_s",
    "prune_s",
    "macs_pruned",
    "params_pruned",
    "connections_kept",
    "connections",
    "verification_error",
)


def search_count(cfg: dict) -> int | None:
    """How many candidates the recipe's lcp search evaluates: exactly its ``candidates``, else its preset's, when
    nothing stops it early (no time stop); None when a time stop may."""
    s = cfg["search"]
    preset = PRESETS.get(s["search_preset"])
    if preset is None or (s["search_time"] != 0 and (s["search_time"] is not None or preset.seconds is not None)):
        return None
    return int(s["candidates"] or preset.candidates)


def searched_otherwise(df: pd.DataFrame, cfg: dict) -> list[int]:
    """The candidate counts that ``lcp`` rows of ``df`` evaluated and the recipe's search would not
    (``search_count``). A preset's numbers are not in the signature (the recipe names the preset), so a row made
    before its preset changed would pass for today's; the rows record their count. Rows of a time-stopped search,
    or without the column, are not judged."""
    want = search_count(cfg)
    if want is None or df.empty or "search_candidates" not in df.columns:
        return []
    ours = df[(df["method"] == "lcp") & df["status"].astype(str).eq("ok")]["search_candidates"].dropna()
    return sorted({int(n) for n in ours if int(n) != want})


def fitted_at(cfg: dict) -> list[float]:
    """The budgets the recipe's lcp search averages its fitness over: ``search.search_budget``, else them all."""
    sb = cfg["search"].get("search_budget")
    return [float(sb)] if sb else sorted(float(b) for b in cfg["budgets"])


def fitted_at_text(cfg: dict) -> str:
    """``fitted_at`` as an lcp row's ``search_budgets`` cell, e.g. ``0.3;0.5``."""
    return ";".join(f"{b:g}" for b in fitted_at(cfg))


def searched_at_other_budgets(df: pd.DataFrame, cfg: dict, meta: dict, budgets: set[float]) -> list[str]:
    """The search budgets of the ``lcp`` rows of ``df`` at ``budgets`` (those this run adds lcp rows at) that
    are not this run's (``fitted_at``): a search averaged over 0.3 and 0.5 and one at 0.5 alone cut other networks
    at 0.5, and the report would average them as one. Rows without the cell take the table's meta
    ``search_budgets`` unless its searches ran separately."""
    if df.empty or "method" not in df.columns or not budgets:
        return []
    at = pd.to_numeric(df["budget"]).apply(lambda v: any(abs(v - b) < 1e-9 for b in budgets))
    ours = df[(df["method"] == "lcp") & df["status"].astype(str).eq("ok") & at]
    legacy = meta.get("search_budgets") if not meta.get("searched_separately") else None
    legacy_text = ";".join(f"{float(b):g}" for b in legacy) if legacy else None
    want = fitted_at_text(cfg)
    seen = set()
    for cell in ours.get("search_budgets", pd.Series([None] * len(ours), index=ours.index)):
        text = cell if isinstance(cell, str) and cell else legacy_text
        if text is not None and text != want:
            seen.add(text)
    return sorted(seen)


def _done_keys(df: pd.DataFrame, retry_errors: bool) -> set[tuple[str, float, int]]:
    if df.empty:
        return set()
    status = df["status"].astype(str)
    redo = status.str.startswith("skipped")  # a peer that was not installed: tried again (e.g. from its venv)
    keep = df[~(redo | status.str.startswith("error"))] if retry_errors else df[~redo]
    return {(str(r.method), round(float(r.budget), 6), int(r.seed)) for r in keep.itertuples()}


# ------------------------------------------------------------------------------------------------------ run


class Bench:
    """One model, its data and channel graph, shared by every row of the run."""

    def __init__(self, cfg: dict, work: Path, log: Log, progress: bool):
        from lcp.run.load import baseline_accuracy
        from lcp.training.train import evaluate

        self.cfg, self.work, self.log, self.progress = cfg, work, log, progress
        self.device = cfg["device"]
        t0 = time.perf_counter()
        self.loaded = load(cfg, log)
        self.bundle = self.loaded.bundle
        self.size = tuple(self.loaded.input_size)
        self.example = torch.zeros(1, *self.size)
        self.test = self.bundle.loader("test", 256)
        if cfg["test_images"] is None:
            self.top1_base = baseline_accuracy(self.loaded, device=self.device)  # cached per weights and data
        else:
            self.top1_base = evaluate(self.loaded.model, self.test, device=self.device)["top1"]
            self.loaded.model.cpu()  # the channel graph and surgery work on the CPU copy
        self.graph = lcp.build_graph(self.loaded.model, self.example)
        self.macs_base = lcp.count_macs(self.loaded.model, self.example)
        self.params_base = lcp.count_params(self.loaded.model)
        self.base_weights = weights_digest(self.loaded.model)  # every row names the baseline it was cut from
        self.searches: dict[tuple, tuple[Any, float]] = {}
        self.search_candidates: dict[int, int] = {}  # seed -> candidates lcp's search evaluated
        self.setup_s = time.perf_counter() - t0
        log(
            f"{self.loaded.name} on {self.loaded.dataset}: {self.macs_base / 1e6:.2f}M MACs, "
            f"{self.params_base / 1e6:.3f}M params, baseline top-1 {self.top1_base:.2f}% "
            f"({len(self.bundle.train_x)} train, {len(self.bundle.holdout_x)} holdout, "
            f"{len(self.bundle.test_x)} test images; weights {self.loaded.weights}; device {self.device})"
        )

    # -- searches: each runs once, its record and time kept in the work folder
    def _searched(self, folder: Path, what: str, search: Callable[[], dict]) -> dict:
        """The record ``search()`` returns, computed once and kept in ``folder/search_done.json`` with
        ``search_s`` (its own, or else the call's time) plus the time of interrupted attempts, whose states
        resume (``search_partial.json``)."""
        from lcp.io import read_json

        done, part = folder / "search_done.json", folder / "search_partial.json"
        if done.is_file():
            record = read_json(done, what="search record")
            self.log(f"{what}: reusing the search in {folder} (searched in {record['search_s']:.0f} s)")
            return record
        folder.mkdir(parents=True, exist_ok=True)
        before = float(read_json(part, what="search record").get("search_s", 0.0)) if part.is_file() else 0.0
        t0 = time.perf_counter()
        try:
            record = search()
        except BaseException:
            atomic_write_json(part, {"search_s": before + time.perf_counter() - t0})
            raise
        record = {"search_s": time.perf_counter() - t0, **record}
        record["search_s"] += before
        atomic_write_json(done, record)
        part.unlink(missing_ok=True)
        self.log(f"{what}: the search took {record['search_s']:.0f} s")
        return record

    def transforms_for(self, seed: int) -> tuple[Any, float]:
        """Learned compensation for ``seed`` (method lcp's ``learn``, as ``lcp prune`` runs it; one search for
        every budget)."""
        if ("lcp", seed) in self.searches:
            return self.searches["lcp", seed]
        from lcp.cut.ranking import Transforms
        from lcp.io import read_json

        s = self.cfg["search"]
        budgets = sorted(float(b) for b in self.cfg["budgets"])
        # the budgets the search is fitted at name its folder: a rerun at other budgets searches again
        folder = self.work / f"search_seed{seed}_at{'_'.join(f'{b:g}' for b in budgets)}"
        pc = prune_config(
            self.cfg,
            method="lcp",
            seed=seed,
            budget=budgets[0],
            budgets=budgets,
            out=str(folder),
            resume=True,
            progress=self.progress,
            search_preset=s["search_preset"],
            search_time=s["search_time"],
            candidates=s["candidates"],
            population=s["population"],
            tournament=s["tournament"],
            optimizer=s["optimizer"],
            compensation=s["compensation"],
            label_free=s["label_free"],
            search_eval_images=s["eval_images"],
            search_recal_batches=s["recal_batches"],
        )

        def run() -> dict:
            folder.mkdir(parents=True, exist_ok=True)
            get_method("lcp").learn(self.context(pc, folder))
            done = read_json(folder / "search.json", what="search summary")
            self.log(f"seed {seed}: fitness {done['identity_fitness']:.4f} (identity) -> {done['best_fitness']:.4f}")
            return {
                "best_fitness": done["best_fitness"],
                "identity_fitness": done["identity_fitness"],
                "candidates": done["candidates_evaluated"],
                "prior_s": done.get("prior_seconds", 0.0),
                "search_budget": [s["search_budget"]] if s["search_budget"] else budgets,
            }

        info = self._searched(folder, f"seed {seed}: lcp", run)
        tf = Transforms.from_json(read_json(folder / "transforms.json", what="transforms"), self.graph)
        self.searches["lcp", seed] = (tf, float(info["search_s"]))
        self.search_candidates[seed] = int(info["candidates"])
        return self.searches["lcp", seed]

    def ratios_for(self, method: str, seed: int, budget: float) -> tuple[Any, float]:
        """Keep ratios per group learned by the ``method`` agent (lfgcl / amc) at ``budget`` (or at the
        recipe's ``search.search_budget``, then once per seed for every budget), with the method's ``learn``."""
        sb = float(self.cfg["search"]["search_budget"] or budget)
        if (method, seed, sb) in self.searches:
            return self.searches[method, seed, sb]

        folder = self.work / f"{method}-{signature(self.cfg, method)}-seed{seed}-at{sb:g}"
        pc = prune_config(
            self.cfg, method=method, seed=seed, budget=sb, out=str(folder), resume=True, progress=self.progress
        )

        def run() -> dict:
            folder.mkdir(parents=True, exist_ok=True)
            ratios = get_method(method).learn(self.context(pc, folder)).ratios
            return {"ratios": [float(r) for r in ratios], "search_budget": sb}

        info = self._searched(folder, f"seed {seed}: {method} at {sb:g}", run)
        self.searches[method, seed, sb] = (np.asarray(info["ratios"], dtype=np.float64), float(info["search_s"]))
        return self.searches[method, seed, sb]

    def context(self, pc: PruneConfig, folder: Path) -> Context:
        """The method context of one search: this bench's graph and data, ``pc``'s options, ``folder``."""
        return Context(
            self.graph, pc, self.bundle, folder, self.log, name=self.loaded.name, weights=self.loaded.weights
        )

    def connections_cut(self, method: str, budget: float, seed: int) -> tuple[nn.Module, dict]:
        """``ads`` / ``lwp``: the method searches the connections at ``budget`` and cuts them (verified); the
        network is saved with its cost (lcp's connection cost model, as in its report.csv) and reloaded, and must
        count the same MACs."""
        folder = self.work / f"{method}-{signature(self.cfg, method)}-seed{seed}-b{budget:g}"
        pc = prune_config(
            self.cfg, method=method, seed=seed, budget=budget, out=str(folder), resume=True, progress=self.progress
        )

        def run() -> dict:
            folder.mkdir(parents=True, exist_ok=True)
            m, ctx = get_method(method), self.context(pc, folder)
            t0 = time.perf_counter()
            learned = m.learn(ctx)
            search_s = time.perf_counter() - t0
            res = m.cut(ctx, learned, budget)
            pruned = res.model.cpu()
            spec = store.channels_spec(
                self.graph,
                res.plan.removed,
                pruned,
                model_name=self.loaded.name,
                num_classes=self.bundle.num_classes,
                input_size=self.size,
                extra={"budget": budget, "budget_type": pc.budget_type, "method": method, **res.info.get("spec", {})},
            )
            store.write(folder, pruned, spec)
            return {
                "search_s": search_s,
                "prune_s": res.seconds,
                "macs_pruned": res.plan.macs,
                "params_pruned": res.plan.params,
                **res.info["columns"],
            }

        info = self._searched(folder, f"seed {seed}: {method} at {budget:g}", run)
        model = lcp.load(folder)
        macs = lcp.count_macs(model, self.example)
        if macs != info["macs_pruned"]:
            raise LcpError(f"the {method} network in {folder} counts {macs} MACs, its report {info['macs_pruned']}")
        return model, {"importance": "", **info}

    def modelopt_cut(self, budget: float, seed: int) -> tuple[nn.Module, dict]:
        """Model Optimizer's FastNAS at ``budget``; its sensitivities are scored on the held-out split (top-1
        after BatchNorm recalibration on the row's seeded train batches) and kept in the work folder."""
        from lcp.training.train import evaluate, recalibrate_bn

        mo = self.cfg["modelopt"]
        folder = self.work / f"modelopt-{signature(self.cfg, 'modelopt')}-seed{seed}"
        held = self.bundle.loader("holdout", 250, limit=int(mo["score_images"]))
        recal = self.bundle.loader("train", int(self.cfg["batch_size"]), shuffle=True, seed=seed)

        def score(m: nn.Module) -> float:
            recalibrate_bn(m, recal, batches=int(mo["recal_batches"]))
            return evaluate(m, held)["top1"]

        t0 = time.perf_counter()
        model, info = mo_prune(
            self.loaded.model,
            self.example,
            budget=budget,
            budget_type=self.cfg["budget_type"],
            score=score,
            checkpoint=folder / "fastnas_search.pth",
            channel_divisor=int(mo["channel_divisor"]),
            max_tries=int(mo["max_tries"]),
        )
        macs, params = lcp.count_macs(model, self.example), lcp.count_params(model)
        return model, {
            "importance": "fastnas",
            "macs_pruned": macs,
            "params_pruned": params,
            "search_s": time.perf_counter() - t0,
            "prune_s": 0.0,
            "mo_constraint": info["mo_constraint"],
            "mo_tries": info["mo_tries"],
        }

    # -- one row
    def cut(self, method: str, budget: float, seed: int) -> tuple[nn.Module, dict]:
        """The pruned network and its cost columns."""
        from lcp.cut.pruner import prune_graph

        cfg = self.cfg
        if method == CEILING:
            return copy.deepcopy(self.loaded.model), {
                "importance": "",
                "macs_pruned": self.macs_base,
                "params_pruned": self.params_base,
                "search_s": 0.0,
                "prune_s": 0.0,
            }
        if method == "torch_pruning":
            t0 = time.perf_counter()
            model, info = tp_prune(
                self.loaded.model,
                self.example,
                budget=budget,
                budget_type=cfg["budget_type"],
                num_classes=self.bundle.num_classes,
                **cfg["torch_pruning"],
            )
            prune_s = time.perf_counter() - t0
            macs, params = lcp.count_macs(model, self.example), lcp.count_params(model)
            return model, {
                "importance": f"tp_magnitude_l{cfg['torch_pruning']['p']}",
                "macs_pruned": macs,
                "params_pruned": params,
                "search_s": 0.0,
                "prune_s": prune_s,
                "tp_pruning_ratio": info["tp_pruning_ratio"],
                "tp_tries": info["tp_tries"],
            }
        if method == "modelopt":
            return self.modelopt_cut(budget, seed)
        if method in CONNECTION_METHODS:
            return self.connections_cut(method, budget, seed)
        tf, ratios, search_s = None, None, 0.0
        if method == "lcp":
            tf, search_s = self.transforms_for(seed)
        elif method in AGENT_METHODS:
            ratios, search_s = self.ratios_for(method, seed, budget)
        batches = None
        if cfg["importance"] == "taylor":
            batches = self.bundle.loader("train", 64, shuffle=True, seed=seed, limit=1024)
        res = prune_graph(
            self.graph,
            budget=budget,
            budget_type=cfg["budget_type"],
            method=method,
            importance=cfg["importance"],
            aggregate=cfg["aggregate"],
            transforms=tf,
            round_to=cfg["round_to"],
            min_ratio=cfg["min_ratio"],
            seed=seed,
            batches=batches,
            ratios=ratios,
        )
        return res.model, {
            "importance": cfg["importance"],
            "macs_pruned": res.plan.macs,
            "params_pruned": res.plan.params,
            "search_s": search_s,
            "prune_s": res.seconds,
            **(
                {"search_candidates": self.search_candidates[seed], "search_budgets": fitted_at_text(self.cfg)}
                if method == "lcp"
                else {}
            ),
            "cut": res,  # for the reconstruction (popped by ``row``)
        }

    def finetune_checkpoint(self, method: str, budget: float, seed: int, cut: nn.Module) -> Path:
        """Where a row's fine-tuning keeps its per-epoch checkpoint until the row is written: named by the row and
        a digest of the cut network's weights, so a checkpoint of another cut is never resumed."""
        sig = signature(self.cfg, method)
        return self.work / f"finetune-{method}-{sig}-seed{seed}-b{budget:g}-{weights_digest(cut)}.safetensors"

    def row(self, method: str, budget: float, seed: int) -> dict:
        from lcp.cut.latency import measure
        from lcp.training.reconstruct import reconstruct
        from lcp.training.train import evaluate, recalibrate_bn

        cfg = self.cfg
        t_row = time.perf_counter()
        row: dict[str, Any] = {
            "model": self.loaded.name,
            "dataset": self.loaded.dataset,
            "method": method,
            "importance": cfg["importance"],
            "budget_type": cfg["budget_type"],
            "budget": budget,
            "macs_base": self.macs_base,
            "params_base": self.params_base,
            "top1_base": self.top1_base,
            "base_weights": self.base_weights,
            "finetune_epochs": float(cfg["finetune_epochs"]),
            "seed": seed,
        }
        try:
            pruned, info = self.cut(method, budget, seed)
            cut = info.pop("cut", None)
            # a killed row's fine-tuning resumes from its last finished epoch, on this same cut only
            ckpt = self.finetune_checkpoint(method, budget, seed, pruned)
            row.update(info)
            row["macs_ratio"] = row["macs_pruned"] / self.macs_base
            row["params_ratio"] = row["params_pruned"] / self.params_base
            t0 = time.perf_counter()
            dev = self.device
            pruned = pruned.to(dev)
            train = self.bundle.loader("train", cfg["batch_size"], shuffle=True, augment=False, seed=seed)
            if cfg["reconstruct_images"] > 0:  # the cut's layers refitted (lcp's own cuts; not the peers')
                rec = {"layers": 0}
                if cut is not None:
                    rec = reconstruct(
                        pruned,
                        self.loaded.model,
                        cut.graph,
                        cut.plan.removed,
                        train,
                        images=cfg["reconstruct_images"],
                        seed=seed,
                        device=dev,
                    )
                row["reconstructed_layers"] = rec["layers"]
            if cfg["recal_batches"] > 0:
                recalibrate_bn(pruned, train, batches=cfg["recal_batches"], device=dev)
            row["top1_pruned_noft"] = evaluate(pruned, self.test, device=dev)["top1"]
            row["recal_eval_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            steps, resumed, earlier = finetune(pruned, self.bundle, cfg, seed, self.progress, self.loaded.model, ckpt)
            row["finetune_steps"] = steps
            row["finetune_s"] = time.perf_counter() - t0 + earlier  # a resumed row: every run's epochs
            if resumed:
                row["finetune_resumed_from_epoch"] = resumed
                self.log(f"{method} seed {seed} at {budget:g}: fine-tuning resumed after epoch {resumed}")
            row["top1_pruned"] = evaluate(pruned, self.test, device=dev)["top1"] if steps else row["top1_pruned_noft"]
            t0 = time.perf_counter()
            reps = int(cfg["latency_repeats"])
            for b in cfg["latency_batches"] if reps > 0 else ():
                kw = dict(
                    batch=int(b), device=dev, n_threads=cfg["threads"], repeats=reps, warmup=min(5, max(1, reps // 4))
                )
                base = measure(self.loaded.model, self.size, **kw)["median_ms"]
                new = measure(pruned, self.size, **kw)["median_ms"]
                tag = "" if int(b) == 1 else str(int(b))
                row[f"latency{tag}_base_ms"], row[f"latency{tag}_pruned_ms"] = base, new
                row[f"speedup{tag}"] = base / new
            row["latency_s"] = time.perf_counter() - t0
            row["status"] = "ok"
        except Exception as e:  # one broken row must not end the comparison
            row["status"] = f"error: {first_line(e)}"
            if os.environ.get("LCP_BENCH_TRACEBACK"):
                traceback.print_exc()
        row["row_s"] = time.perf_counter() - t_row
        return row


def _host() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_pruning": tp_version(),
        "modelopt": mo_version(),
        "lcp": lcp.__version__,
    }


def _command(argv: list[str]) -> str:
    script = Path(__file__).resolve()
    try:
        script_s = str(script.relative_to(Path.cwd()))
    except ValueError:
        script_s = str(script)
    return " ".join(shlex.quote(a) for a in ["python", script_s, *argv])


def run(args: argparse.Namespace, argv: list[str], log: Log = print) -> pd.DataFrame:
    cfg = settings_from(args)
    sig = signature(cfg)
    out = Path(cfg["out"])
    meta_path = out.with_suffix(".meta.json")
    work = Path(args.work) / f"{out.stem}-{sig}"
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    with RunLock(work):
        old = read_rows(out)
        stale = (
            set()
            if old.empty or "config" not in old.columns
            else {
                (m, c) for m, c in zip(old["method"].astype(str), old["config"].astype(str)) if c != signature(cfg, m)
            }
        )
        counts = searched_otherwise(old, cfg)
        if stale and not args.overwrite:
            found = ", ".join(sorted({c for _, c in stale}))
            now = ", ".join(sorted({signature(cfg, m) for m, _ in stale}))
            raise LcpError(
                f"{out} holds rows made with other settings (config {found}, now {now}): pass "
                "--overwrite to start over, or --out another file"
            )
        if counts and not args.overwrite:
            raise LcpError(
                f"{out} holds lcp rows whose search evaluated {', '.join(map(str, counts))} candidates, the recipe's "
                f"search {search_count(cfg)}: pass --overwrite to start over, or --out another file"
            )
        if args.overwrite and out.exists():
            out.unlink()
            meta_path.unlink(missing_ok=True)
            old = pd.DataFrame()
        todo_all = tasks(cfg)
        done = _done_keys(old, args.retry_errors)
        todo = [t for t in todo_all if (t[0], round(t[1], 6), t[2]) not in done]
        started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        host = _host()
        lcp_at = {t[1] for t in todo if t[0] == "lcp"}
        runs_lcp = bool(lcp_at)
        had_lcp = {"method", "status"} <= set(old.columns) and bool(
            ((old["method"] == "lcp") & (old["status"] == "ok")).any()
        )
        meta_now = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        other = searched_at_other_budgets(old, cfg, meta_now, lcp_at)
        if other and not args.overwrite:
            raise LcpError(
                f"{out} holds lcp rows whose search was fitted at budgets {', '.join(other)}, this run's at "
                f"{fitted_at_text(cfg)}, at the same budget: the report would average both as one; run the "
                "other seeds alike (their --budgets), or pass --out another file or --overwrite"
            )
        invocation = {"command": _command(argv), "started": started, "rows": len(todo), "id": secrets.token_hex(6)}

        def begin(meta: dict) -> None:
            for peer in PEERS:  # the peers may run from another venv: keep the version their rows were made with
                host[peer] = host[peer] or (meta.get("host") or {}).get(peer)
            meta.update(config=cfg, config_hash=sig, recipe=str(args.recipe), host=host)
            fitted = sorted(meta.get("search_budgets") or [])
            if runs_lcp and had_lcp and fitted and fitted != fitted_at(cfg):
                # lcp rows fitted at other budgets stay (at other budgets): each row was searched at its own
                meta["search_budgets"] = sorted(set(meta["search_budgets"]) | set(fitted_at(cfg)))
                meta["searched_separately"] = True
            elif runs_lcp or "search_budgets" not in meta:
                meta["search_budgets"] = fitted_at(cfg)
            meta.setdefault("runs", []).append(invocation)

        t_all = time.perf_counter()
        bench = Bench(cfg, work, log, progress=not args.no_progress) if todo else None
        other = other_baselines(old, bench.base_weights, bench.top1_base) if bench else []
        if other:
            raise LcpError(
                f"{out} holds rows cut from another baseline ({', '.join(other)}; now weights "
                f"{bench.base_weights}, top-1 {bench.top1_base:.2f}%): a table's rows share one baseline; pass "
                "--overwrite to start over, or --out another file"
            )
        # the meta file is re-read under a lock at each update: another run on the same --out keeps its entries
        update_json(meta_path, begin)
        log(f"{len(todo_all) - len(todo)} of {len(todo_all)} rows already in {out}; running {len(todo)}")
        if bench is not None:
            data = {
                "source": bench.bundle.source,
                "train": len(bench.bundle.train_x),
                "holdout": len(bench.bundle.holdout_x),
                "test": len(bench.bundle.test_x),
                "steps_per_epoch": _steps_per_epoch(bench.bundle, int(cfg["batch_size"])),
                "weights": bench.loaded.weights,
                "top1_base": bench.top1_base,
                "base_weights": bench.base_weights,
                "macs_base": bench.macs_base,
                "params_base": bench.params_base,
            }
            update_json(meta_path, lambda meta: meta.update(data=data))
            missing = {
                "torch_pruning": None if tp_version() else "torch-pruning is not installed (pip install -e '.[bench]')",
                "modelopt": None if mo_version() else "nvidia-modelopt is not installed (docs/benchmarks.md: its venv)",
            }
            for method, budget, seed in todo:
                if missing.get(method):
                    row = {
                        "model": bench.loaded.name,
                        "dataset": bench.loaded.dataset,
                        "method": method,
                        "budget_type": cfg["budget_type"],
                        "budget": budget,
                        "seed": seed,
                        "macs_base": bench.macs_base,
                        "params_base": bench.params_base,
                        "top1_base": bench.top1_base,
                        "base_weights": bench.base_weights,
                        "finetune_epochs": float(cfg["finetune_epochs"]),
                        "status": f"skipped: {missing[method]}",
                    }
                else:
                    row = bench.row(method, budget, seed)
                row.update(
                    config=signature(cfg, method),
                    quick=cfg["quick"],
                    threads=cfg["threads"],
                    finished=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                )
                append_row(out, row)
                for ckpt in bench.work.glob(f"finetune-{method}-*-seed{seed}-b{budget:g}-*.safetensors"):
                    ckpt.unlink()  # the row is written (a failed one's retry starts its fine-tuning afresh)
                if row["status"] == "ok":
                    log(
                        f"{method:>13} {budget:g} seed {seed}: MACs {row['macs_ratio']:.3f}, params "
                        f"{row['params_ratio']:.3f}, top-1 {row['top1_pruned_noft']:.2f}% (BN recal) -> "
                        f"{row['top1_pruned']:.2f}% ({row['finetune_steps']} steps)"
                        + (f", speedup b1 {row['speedup']:.2f}x" if "speedup" in row else "")
                        + f" ({row['row_s']:.0f} s)"
                    )
                else:
                    log(f"{method:>13} {budget:g} seed {seed}: {row['status']}")
        invocation["finished"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        invocation["wall_s"] = round(time.perf_counter() - t_all, 1)

        def finish(meta: dict) -> None:
            runs = meta.setdefault("runs", [])
            mine = [r for r in runs if r.get("id") == invocation["id"]]
            if mine:
                mine[-1].update(invocation)
            else:  # the file was replaced meanwhile (another run's --overwrite): record this run again
                runs.append(invocation)

        update_json(meta_path, finish)
        log(f"done in {invocation['wall_s']:.0f} s: {out}")
        return read_rows(out)


def exit_on_sigterm() -> None:
    """Make SIGTERM (e.g. ``timeout`` in gpu_tables.sh) raise ``SystemExit`` in the main thread, so that an
    interrupted search still records the time it took (``Bench._searched``) and atomic writes clean up."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        run(args, argv, log=lambda s: print(s, flush=True))
    except LcpError as e:
        print(f"compare: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    exit_on_sigterm()
    sys.exit(main())

"""The recovery ablation: one pruned network, several recovery recipes, each beside the ceiling.

A cut is made once by ``lcp prune ... --finetune-epochs 0 --reconstruct-images 0 --out DIR`` (the recipe's ``cut``;
not refitted: the variants with ``reconstruct`` refit it themselves). Every variant of the recipe (learning rate,
distillation from the unpruned network and its weight, batch size, epochs, a moving average of the weights,
attention-transfer hints: ``hint``) then recovers a fresh copy of that pruned network, and a fresh copy of the
unpruned network (the ceiling: the same recovery; with ``kd`` it distils from a frozen copy of itself), with lcp's
own ``recalibrate_bn`` and ``finetune`` (SGD Nesterov, cosine to 0, weight decay 5e-4, flip and pad-crop; KD loss
``(1 - w) * CE + w * T^2 KL``, ``w`` the variant's ``kd_weight``, 0.9 unless set, ``T`` its ``kd_t``, 4 unless set).
A variant with ``steps: N`` prunes in N steps instead (``stepwise_cut``): the cut's own learned compensation
(``transforms.json``) cuts the original to the geometric intermediate budgets, one epoch of the same recovery after
each, then to the cut's budget, which gets the remaining epochs. Each row gives top-1 on the held-out split (carved
from train, seed 0: what a default is chosen on) and on the test split (what is reported), so nothing is selected on
the test split.

Rows are appended atomically as they finish and a rerun skips the rows already there, so the ablation runs in
resumable chunks (``--only NAME`` runs one variant, ``--nets pruned`` the pruned side only).

    source ../shared/offline-env.sh
    lcp prune --model resnet20 --budget 0.5 --finetune-epochs 0 --reconstruct-images 0 --search-time 0 --threads 1 \
        --out runs/cut/resnet20_0.5
    python benchmarks/recovery.py --recipe recipes/recovery_resnet20.yaml
    python benchmarks/recovery.py --report          # docs/recovery.md from every recipes/recovery_*.yaml
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import hashlib
import json
import math
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lcp
from lcp.cut.ranking import Transforms
from lcp.engine.surgery import apply_plan
from lcp.engine.types import floor_keep
from lcp.errors import LcpError
from lcp.io import atomic_write_text, read_json, upsert_csv_row
from lcp.models.store import removed_mask, widths
from lcp.run.config import PruneConfig, read_yaml_mapping
from lcp.run.load import load_model_and_data
from lcp.training.evaluate import evaluate, inputs_and_labels, recalibrate_bn, torch_threads
from lcp.training.reconstruct import reconstruct
from lcp.training.train import distillation_loss, finetune

ROOT = Path(__file__).resolve().parents[1]
NETS = ("pruned", "ceiling")
#: What a variant may set, with the defaults of ``lcp prune``'s recovery.
VARIANT_KEYS = {
    "lr": 0.01,
    "kd": False,
    "epochs": 1,
    "steps": 1,
    "kd_weight": 0.9,
    "kd_t": 4.0,
    "batch": None,
    "reconstruct": 0,
    "ema": 0.0,
    "hint": 0.0,
}
COLUMNS = [
    "model",
    "cut",
    "setup",
    "macs_ratio",
    "variant",
    "net",
    "seed",
    "lr",
    "kd",
    "epochs",
    "steps",
    "kd_weight",
    "kd_t",
    "batch",
    "reconstruct",
    "ema",
    "hint",
    "top1_noft",
    "holdout_top1",
    "top1",
    "finetune_s",
    "host",
    "date",
]


def read_recipe(path: str | Path) -> dict:
    """The recipe: ``model``, ``cut`` (an ``lcp prune --finetune-epochs 0`` folder; ``cut_command``: how it was
    made, for the page), ``variants`` (name -> lr / kd / epochs / steps / kd_weight / kd_t: the distillation
    temperature / batch: the fine-tuning batch size,
    the recipe's ``batch_size`` when absent / reconstruct: images for ``lcp prune --reconstruct-images``, 0 off /
    ema: the decay of a moving average of the weights evaluated instead of the last step's, 0 off / hint: the
    weight b of attention-transfer hints added to the distillation, 0 off; with kd, one step only),
    ``seeds``, ``out``; optional ``data``,
    ``checkpoint`` (as for ``lcp prune``), ``threads``, ``batch_size``, ``recal_batches``, ``holdout`` and
    ``note`` (a paragraph under the table on the page)."""
    cfg = read_yaml_mapping(path)
    for key in ("model", "cut", "variants", "out"):
        if key not in cfg:
            raise LcpError(f"recipe {path} has no {key!r}")
    variants = cfg["variants"]
    if not isinstance(variants, dict) or not variants:
        raise LcpError(f"recipe {path}: variants must map names to settings")
    for name, v in variants.items():
        bad = set(v or {}) - set(VARIANT_KEYS)
        if bad:
            raise LcpError(f"recipe {path}: variant {name} has unknown keys {sorted(bad)} (use {list(VARIANT_KEYS)})")
        variants[name] = {**VARIANT_KEYS, **(v or {})}
        v = variants[name]
        steps_ok = isinstance(v["steps"], int) and not isinstance(v["steps"], bool) and 1 <= v["steps"] <= v["epochs"]
        weight_ok = isinstance(v["kd_weight"], (int, float)) and 0 <= v["kd_weight"] <= 1
        temp_ok = isinstance(v["kd_t"], (int, float)) and not isinstance(v["kd_t"], bool) and v["kd_t"] > 0
        batch_ok = v["batch"] is None or (
            isinstance(v["batch"], int) and not isinstance(v["batch"], bool) and v["batch"] > 0
        )
        rec_ok = isinstance(v["reconstruct"], int) and not isinstance(v["reconstruct"], bool) and v["reconstruct"] >= 0
        ema_ok = isinstance(v["ema"], (int, float)) and not isinstance(v["ema"], bool) and 0 <= v["ema"] < 1
        hint_ok = (
            isinstance(v["hint"], (int, float))
            and not isinstance(v["hint"], bool)
            and math.isfinite(v["hint"])
            and v["hint"] >= 0
        )
        if (
            not isinstance(v["kd"], bool)
            or v["lr"] <= 0
            or v["epochs"] < 1
            or not steps_ok
            or not weight_ok
            or not temp_ok
            or not batch_ok
            or not rec_ok
            or not ema_ok
            or not hint_ok
            or (v["hint"] and (not v["kd"] or v["steps"] > 1))
            or (v["reconstruct"] and v["steps"] > 1)
        ):
            raise LcpError(
                f"recipe {path}: variant {name} needs lr > 0, kd true/false, epochs >= 1, steps an integer from 1 "
                "to epochs, kd_weight from 0 to 1, kd_t a temperature > 0, batch a positive integer, reconstruct a "
                "whole number of images (one-step variants only), ema a decay from 0 (off) to below 1, hint a "
                "finite weight >= 0 (with kd, one-step variants only)"
            )
    defaults = {"seeds": [0], "threads": 1, "batch_size": 128, "recal_batches": 20, "holdout": 5000}
    cfg = {**defaults, "data": None, "checkpoint": None, **cfg}
    for v in variants.values():
        v["batch"] = v["batch"] or cfg["batch_size"]
    return cfg


def append_row(path: Path, row: dict) -> None:
    """Add one row (replacing an earlier one of the same variant, net and seed) and rewrite the CSV atomically."""
    upsert_csv_row(path, {c: row[c] for c in COLUMNS}, keys=("variant", "net", "seed"), first=COLUMNS)


# Attention transfer (Zagoruyko & Komodakis, 2017): a pruned network's feature maps have other widths than the
# original's, but their spatial attention maps (one value per position) can be compared.


def attention_map(feature: Tensor) -> Tensor:
    """``(N, C, H, W) -> (N, H*W)``: the channel mean of the squared activations, L2-normalised per sample."""
    return F.normalize(feature.float().pow(2).mean(1).flatten(1), dim=1)


def attention_loss(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    """Sum over the tapped layers of the mean squared difference of the two attention maps."""
    return sum((attention_map(s) - attention_map(t)).pow(2).mean() for s, t in zip(student, teacher))  # type: ignore[return-value]


def hint_layers(model: nn.Module, example: Tensor) -> list[str]:
    """Where to tap: at each spatial resolution, the last module (a child of the model or of one of its children,
    e.g. ``layer1`` or ``features.3``) to produce a 4-D output at that resolution, in the order they run."""
    order: list[tuple[str, tuple[int, int]]] = []
    hooks = []
    for name, module in model.named_modules():
        if name and name.count(".") <= 1:

            def tap(_m, _i, out, name=name):
                if isinstance(out, Tensor) and out.dim() == 4:
                    order.append((name, tuple(out.shape[-2:])))

            hooks.append(module.register_forward_hook(tap))
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(example)
            model.train(was)
    finally:
        for h in hooks:
            h.remove()
    last: dict[tuple[int, int], str] = {}
    for name, size in order:
        last.pop(size, None)  # re-insert: the dict keeps the order in which each resolution was last seen
        last[size] = name
    return list(last.values())


@contextmanager
def taps(model: nn.Module, layers: list[str]) -> Iterator[list[Tensor]]:
    """While open, the outputs of ``layers`` of each forward pass, in the order they run (cleared by the caller)."""
    outputs: list[Tensor] = []
    modules = [model.get_submodule(n) for n in layers]
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for m in modules]
    try:
        yield outputs
    finally:
        for h in hooks:
            h.remove()


def _hinted_loss(net: nn.Module, batch: Any, *, teacher: nn.Module, v: dict, s_out: list, t_out: list) -> torch.Tensor:
    """The variant's distillation loss plus ``hint / 2`` times the attention-transfer loss of the tapped layers."""
    x, y = inputs_and_labels(batch)
    s_out.clear()
    t_out.clear()
    loss, _, _ = distillation_loss(net, teacher, x, y, x.device, v["kd_weight"], v["kd_t"])
    return loss + v["hint"] / 2 * attention_loss(s_out, t_out)


def recover_once(net: nn.Module, teacher: nn.Module | None, bundle: Any, v: dict, seed: int, cfg: dict) -> dict:
    """Recalibrate, evaluate, fine-tune with variant ``v``, evaluate on the held-out and test splits. With
    ``v["ema"]`` a decay, the network evaluated is the exponential moving average of the weights (and BatchNorm
    statistics) over the fine-tuning steps."""
    recal = bundle.loader("train", cfg["batch_size"], shuffle=True, augment=False, seed=seed)
    recalibrate_bn(net, recal, batches=cfg["recal_batches"])
    test, holdout = bundle.loader("test", 256), bundle.loader("holdout", 256)
    noft = evaluate(net, test)["top1"]
    t0 = time.perf_counter()
    average = None
    if v["ema"]:
        ema = torch.optim.swa_utils.get_ema_multi_avg_fn(v["ema"])
        average = torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=ema, use_buffers=True)
    with ExitStack() as stack:
        loss_fn = None
        if v["hint"]:
            layers = hint_layers(teacher, torch.zeros(2, *bundle.input_size))
            missing = [n for n in layers if n not in dict(net.named_modules())]
            if missing:
                raise LcpError(f"the pruned network has no {', '.join(missing)} to take attention hints from")
            s_out, t_out = stack.enter_context(taps(net, layers)), stack.enter_context(taps(teacher, layers))
            loss_fn = partial(_hinted_loss, teacher=teacher, v=v, s_out=s_out, t_out=t_out)
        finetune(
            net,
            bundle,
            epochs=v["epochs"],
            lr=v["lr"],
            batch_size=v["batch"],
            teacher=teacher,
            kd_alpha=v["kd_weight"],
            kd_T=v["kd_t"],
            seed=seed,
            progress=cfg["progress"],
            on_step_end=None if average is None else average.update_parameters,
            loss_fn=loss_fn,
        )
    if average is not None:
        net.load_state_dict(average.module.state_dict())
    return {
        "top1_noft": noft,
        "holdout_top1": evaluate(net, holdout)["top1"],
        "top1": evaluate(net, test)["top1"],
        "finetune_s": time.perf_counter() - t0,
    }


def stepwise_cut(original: nn.Module, cut: Path, bundle: Any, v: dict, seed: int, cfg: dict, log=print) -> nn.Module:
    """The cut's budget reached in ``v["steps"]`` cuts of ``original``, each with the cut's learned compensation
    (its ``transforms.json``, importance and aggregation) re-applied to the scores of the network as it is then,
    and one epoch of the variant's recovery after every cut but the last. Budget k of N is the cut's budget to
    the power k / N (0.3 in two steps: 0.548, then 0.3), always a fraction of the original's MACs; every layer
    keeps the floor of its original width (``min_ratio``), as in one cut."""
    sig = read_json(cut / "run.json", what="run.json")["signature"]
    spec = read_json(cut / "channels.json", what="channels.json")
    one_cut_only = [k for k in ("depth", "max_removal", "time_aware") if sig.get(k)]
    if spec.get("method") not in ("lcp", "global") or spec.get("budget_type") != "macs" or one_cut_only:
        raise LcpError(
            f"steps need a width-only lcp or global cut to a MACs budget without {', '.join(one_cut_only) or 'caps'};"
            f" {cut} is not one"
        )
    learned = read_json(cut / "transforms.json", what="transforms.json")
    x = torch.zeros(1, *bundle.input_size)
    macs0, widths0 = lcp.count_macs(original, x), widths(original)
    teacher = copy.deepcopy(original).eval() if v["kd"] else None
    net = copy.deepcopy(original)
    for k in range(1, v["steps"] + 1):
        target = spec["budget"] ** (k / v["steps"])
        graph = lcp.build_graph(net, x, ignore=sig.get("ignore") or ())
        caps = {}  # the floor of the original width, as a cap on what this cut may remove
        for g in graph.groups:
            n_now, n_then = len(g.units), widths0[g.producers[0]][0]
            keep = floor_keep(n_then, sig["min_ratio"])
            caps[g.producers[0]] = max(0.0, (n_now - keep) / n_now)
        net = lcp.prune(
            net,
            x,
            budget=min(1.0, target * macs0 / lcp.count_macs(net, x)),
            method="lcp",
            transforms=Transforms.from_json(learned, graph),
            importance=sig["importance"],
            aggregate=sig["aggregate"],
            min_ratio=sig["min_ratio"],
            round_to=sig["round_to"],
            ignore=sig.get("ignore") or (),
            max_removal=caps,
        ).model
        log(f"  step {k} of {v['steps']}: cut to {lcp.count_macs(net, x) / macs0:.3f} of the MACs")
        if k < v["steps"]:
            recal = bundle.loader("train", cfg["batch_size"], shuffle=True, augment=False, seed=seed)
            recalibrate_bn(net, recal, batches=cfg["recal_batches"])
            finetune(
                net,
                bundle,
                epochs=1,
                lr=v["lr"],
                batch_size=v["batch"],
                teacher=teacher,
                kd_alpha=v["kd_weight"],
                kd_T=v["kd_t"],
                seed=seed + k,
                progress=cfg["progress"],
            )
    return net


def cut_units(original: nn.Module, cut: Path, x: torch.Tensor) -> tuple[Any, np.ndarray]:
    """The channel graph of ``original`` and the units the cut in ``cut`` removed (its channels.json)."""
    sig = read_json(cut / "run.json", what="run.json")["signature"]
    keys = read_json(cut / "channels.json", what="channels.json")["removed_units"]
    graph = lcp.build_graph(original, x, ignore=sig.get("ignore") or ())
    return graph, removed_mask(graph, keys, f"the cut in {cut}")


SETTINGS = ("lr", "kd", "epochs", "steps", "kd_weight", "kd_t", "batch", "reconstruct", "ema", "hint")
#: settings added after the first rows were written, with the value those rows were made with
MADE_BEFORE = {k: VARIANT_KEYS[k] for k in ("steps", "kd_t", "reconstruct", "ema", "hint")}  # their defaults


def disagreements(row: Any, v: dict | None) -> list[str]:
    """The recovery settings a CSV row was made with that its recipe's variant ``v`` no longer has, as
    "lr 0.05 (recipe 0.01)"; a setting a row does not record (a column added later) is the value every row had
    before it (``MADE_BEFORE``), else taken as the recipe's; a variant the recipe no longer has (``v`` None) has
    none."""
    out: list[str] = []
    if v is None:
        return out
    for k in SETTINGS:
        got = getattr(row, k, None)
        if got is None or (not isinstance(got, str) and pd.isna(got)):
            got = MADE_BEFORE.get(k)
        if got is None or (k in ("kd_weight", "kd_t") and not v["kd"]):
            continue
        want = v[k]
        if k == "kd":
            same = str(got).lower() == str(bool(want)).lower()
        else:
            same = abs(float(got) - float(want or 0)) < 1e-9
        if not same:
            out.append(f"{k} {got} (recipe {want})")
    return out


SETUP_KEYS = ("model", "data", "checkpoint", "holdout", "recal_batches", "batch_size")


def setup_of(cfg: dict, cut: Path | None) -> str:
    """Hash of what a row depends on beyond its variant: the recipe's data, checkpoint, split and recalibration
    settings and, for a pruned row, the cut's ``channels.json`` (a ceiling row does not depend on the cut)."""
    what = {k: cfg.get(k) for k in SETUP_KEYS}
    if cut is not None:
        what["channels"] = (cut / "channels.json").read_text()
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run(cfg: dict, only: list[str] | None, nets: list[str], log=print) -> pd.DataFrame:
    out = ROOT / cfg["out"] if not Path(cfg["out"]).is_absolute() else Path(cfg["out"])
    cut = Path(cfg["cut"]).expanduser()
    if not cut.is_absolute():
        cut = ROOT / cut
    if not (cut / "channels.json").is_file():
        raise LcpError(
            f"no cut in {cut}: make it with lcp prune --model {cfg['model']} --budget B --finetune-epochs 0 "
            f"--reconstruct-images 0 --out {cut}"
        )
    made = pd.read_csv(cut / "report.csv") if (cut / "report.csv").is_file() else pd.DataFrame()
    if made.get("reconstructed_layers", pd.Series(dtype=float)).fillna(0).gt(0).any():
        raise LcpError(
            f"the cut in {cut} was refitted to the original's outputs (lcp prune refits a cut that is not fine-tuned "
            "unless --reconstruct-images 0): make it again with --reconstruct-images 0 (a variant's reconstruct "
            "refits it itself)"
        )
    done = pd.read_csv(out, dtype={"setup": str}) if out.is_file() else pd.DataFrame(columns=COLUMNS)
    setups = {"pruned": setup_of(cfg, cut), "ceiling": setup_of(cfg, None)}
    have = set()
    for r in done.itertuples():
        stale = disagreements(r, cfg["variants"].get(r.variant))
        made = getattr(r, "setup", None)  # rows from before the column: not judged
        if isinstance(made, str) and made and made != setups.get(r.net):
            stale.append("another cut, data split or recalibration (setup " + made + ")")
        if not stale:
            have.add((r.variant, r.net, int(r.seed)))
        elif (not only or r.variant in only) and r.net in nets:  # the recipe changed since: made again, replaced
            log(f"{r.variant} {r.net} seed {int(r.seed)} was made with {', '.join(stale)}: running it again")
    todo = [
        (name, net, seed)
        for name in cfg["variants"]
        if not only or name in only
        for net in nets
        for seed in cfg["seeds"]
        if (name, net, seed) not in have
        # the ceiling of a stepwise or reconstructing variant is the plain one-step variant's (nothing is cut)
        and not (net == "ceiling" and (cfg["variants"][name]["steps"] > 1 or cfg["variants"][name]["reconstruct"]))
    ]
    if not todo:
        log(f"nothing to do: every row is in {out}")
        return done
    pc = PruneConfig(
        model=cfg["model"],
        data=cfg["data"],
        checkpoint=cfg["checkpoint"],
        holdout=cfg["holdout"],
        threads=cfg["threads"],
        finetune_epochs=0,
        progress=False,
    )
    loaded = load_model_and_data(pc, log)
    original = loaded.model.eval()
    pruned = lcp.load(cut)
    x = torch.zeros(1, *loaded.input_size)
    macs0 = lcp.count_macs(original, x)
    host = f"{platform.node()} ({cfg['threads']} thread{'s' if cfg['threads'] != 1 else ''})"
    with torch_threads(cfg["threads"]):
        for name, net, seed in todo:
            v = cfg["variants"][name]
            log(f"{name} ({v}) {net} seed {seed} ...")
            t0 = time.perf_counter()
            if net == "pruned" and v["steps"] > 1:
                student = stepwise_cut(original, cut, loaded.bundle, v, seed, cfg, log)
                last = {**v, "epochs": v["epochs"] - (v["steps"] - 1)}  # one epoch went to each earlier step
            else:
                student, last = copy.deepcopy(pruned if net == "pruned" else original), v
                if net == "pruned" and v["reconstruct"]:
                    # the cut made again from the original: the saved one has BatchNorm statistics recalibrated
                    # for the unfitted cut, and the refit reproduces the original's outputs under the original's
                    graph, removed = cut_units(original, cut, x)
                    student = apply_plan(graph, removed)
                    if widths(student) != widths(pruned):
                        raise LcpError(f"the cut in {cut} made again from the original has other widths")
                    recal = loaded.bundle.loader("train", cfg["batch_size"], shuffle=True, augment=False, seed=seed)
                    refit = reconstruct(student, original, graph, removed, recal, images=v["reconstruct"], seed=seed)
                    log(f"  refitted {refit['layers']} of {refit['candidates']} layers")
            steps_s = time.perf_counter() - t0
            teacher = copy.deepcopy(original).eval() if v["kd"] else None
            numbers = recover_once(student, teacher, loaded.bundle, last, seed, cfg)
            numbers["finetune_s"] += steps_s
            row = {
                "model": cfg["model"],
                "cut": str(cfg["cut"]),
                "setup": setups[net],
                "macs_ratio": round(lcp.count_macs(student, x) / macs0, 4),
                "variant": name,
                "net": net,
                "seed": seed,
                **v,
                **{k: round(x, 2) for k, x in numbers.items()},
                "host": host,
                "date": _dt.date.today().isoformat(),
            }
            append_row(out, row)
            log(
                f"  {name} {net} seed {seed}: {numbers['top1_noft']:.2f}% -> held-out {numbers['holdout_top1']:.2f}%, "
                f"test {numbers['top1']:.2f}% ({numbers['finetune_s']:.0f} s)"
            )
    return pd.read_csv(out)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per variant: mean held-out and test top-1 of the pruned network and the ceiling, and the gap."""
    g = df.groupby(["variant", "net"])[["holdout_top1", "top1"]].mean().unstack("net")
    g.columns = [f"{a}_{b}" for a, b in g.columns]
    if {"top1_pruned", "top1_ceiling"} <= set(g.columns):
        g["gap"] = g["top1_ceiling"] - g["top1_pruned"]
    return g.round(2)


def _ceiling_key(cfg: dict, v: dict) -> tuple:
    """What a ceiling row depends on: the network, the data and the recovery, not the cut."""
    same = ("model", "data", "checkpoint", "batch_size", "recal_batches", "holdout")
    kd = (float(v["kd_weight"]), float(v["kd_t"])) if v["kd"] else None
    recipe = (float(v["lr"]), bool(v["kd"]), v["epochs"], kd, v["batch"], v["ema"], float(v["hint"]))
    return (*(str(cfg[k]) for k in same), *recipe)


def _tables(recipes: list[Path]) -> list[tuple[Path, dict, pd.DataFrame]]:
    """(recipe, its settings, its CSV) for every recipe whose CSV exists."""
    out = []
    for recipe in recipes:
        cfg = read_recipe(recipe)
        csv = ROOT / cfg["out"]
        if csv.is_file():
            out.append((recipe, cfg, pd.read_csv(csv)))
    return out


def _ceilings(tables: list[tuple[Path, dict, pd.DataFrame]]) -> dict[tuple, tuple[pd.Series, str, dict]]:
    """Every table's ceiling rows (mean over their seeds) by ``_ceiling_key``, with the recipe they are in and
    the test top-1 of each seed."""
    out: dict[tuple, tuple[pd.Series, str, dict]] = {}
    for recipe, cfg, df in tables:
        for name, v in cfg["variants"].items():
            rows = df[(df["variant"] == name) & (df["net"] == "ceiling")]
            if len(rows):
                key = _ceiling_key(cfg, v)
                mean = rows[["holdout_top1", "top1", "top1_noft", "finetune_s"]].mean()
                seeds = ", ".join(str(int(x)) for x in sorted(set(rows["seed"])))
                per_seed = {int(r.seed): float(r.top1) for r in rows.itertuples()}
                out.setdefault(key, (mean, f"`{_rel(recipe)}` (seed {seeds})", per_seed))
    return out


def _f(v: float) -> str:
    return "-" if pd.isna(v) else f"{v:.2f}"


def report(recipes: list[Path], md: Path) -> str:
    """``docs/recovery.md``: one table per recipe whose CSV exists (mean over seeds), the commands beside it."""
    parts = [
        "# Recovery: what brings a pruned network back",
        "",
        "<!-- generated by benchmarks/recovery.py --report from benchmarks/results/recovery_*.csv; do not edit -->",
        "",
        "One pruned network per table (an `lcp prune` cut with the default search, no fine-tuning), recovered "
        "with each recipe below, and the unpruned network recovered the same way (the ceiling: the shared "
        "checkpoints are under-trained, so any fine-tuning also improves them). Every recipe: BatchNorm "
        "recalibration on 20 train batches, SGD Nesterov (momentum 0.9, weight decay 5e-4), cosine to 0, "
        "random crop and flip; `kd weight` w: distillation from the unpruned network, loss (1 - w) CE + w T^2 KL "
        "at the temperature T of the `kd T` column (the ceiling from a frozen copy of itself; `no`: labels only). "
        "A default is chosen on the "
        "held-out split (5,000 training images the pruning and fine-tuning never train on); the test split is "
        "reported. Caveat: the shared checkpoints were trained on the whole train split, these 5,000 images included "
        "(`../shared/weights/README.md`), so held-out accuracy is inflated and favours recipes that move the "
        "weights less (a lower learning rate); compare recipes on it only where the test split agrees in sign "
        "or the gap is large. `steps` N > 1: the cut's budget reached in N cuts with the cut's own learned "
        "compensation, one epoch of the same recovery after each but the last (`pruned, BN recal` is then "
        "the last cut's accuracy, after those epochs; its fine-tuning seconds include the cuts); its ceiling is "
        "the one-step recipe's. `gap to ceiling`: the ceiling's test top-1 minus the pruned network's, on the "
        "seeds both have (paired: the same data order). `refit images` N: before the recalibration, every dense "
        "layer of the pruned "
        "network refitted by least squares to the unpruned layer's output on N training images (`lcp prune "
        "--reconstruct-images N`, `lcp.training.reconstruct`); its ceiling is the plain recipe's (nothing is cut "
        "in the unpruned network). `EMA` d: the network evaluated is the exponential moving average of the weights "
        "and BatchNorm statistics over the fine-tuning steps (decay d per step). `hints` b: attention transfer "
        "(Zagoruyko and Komodakis, 2017) added to the distillation, b / 2 times the mean squared difference of the "
        "L2-normalised spatial attention maps (channel mean of the squared activations, which does not depend on "
        "the width) of each resolution's last block, pruned against unpruned (`layer1`-`layer3` of a CIFAR "
        "ResNet). Several seeds: means, and the "
        "standard deviation of the pruned test top-1.",
        "",
    ]
    tables = _tables(recipes)
    shared = _ceilings(tables)
    for recipe, cfg, df in tables:
        for r in df.itertuples():  # the table's settings columns are the recipe's: every row must agree with them
            stale = disagreements(r, cfg["variants"].get(r.variant))
            if stale:
                raise LcpError(
                    f"{cfg['out']}: the {r.variant} {r.net} row (seed {int(r.seed)}) was made with {', '.join(stale)}; "
                    f"run python benchmarks/recovery.py --recipe {_rel(recipe)} --only {r.variant} again"
                )
        g = df.groupby(["variant", "net"])[["holdout_top1", "top1", "top1_noft", "finetune_s"]].mean()
        borrowed: set[str] = set()
        sd = df.groupby(["variant", "net"])["top1"].std()
        seeds = df.groupby(["variant", "net"])["seed"].nunique()
        rows = []

        def cell(name: str, net: str, col: str, g: pd.DataFrame = g, cfg: dict = cfg, borrowed=borrowed) -> float:
            if (name, net) in g.index:
                return g.loc[(name, net), col]
            if net == "ceiling" and name in cfg["variants"]:  # the same recovery of the same network elsewhere
                found = shared.get(_ceiling_key(cfg, cfg["variants"][name]))
                if found is not None:
                    borrowed.add(found[1])
                    return found[0][col]
            return float("nan")

        def by_seed(name: str, net: str, df: pd.DataFrame = df, cfg: dict = cfg) -> dict[int, float]:
            rows = df[(df["variant"] == name) & (df["net"] == net)]
            if len(rows) or net != "ceiling" or name not in cfg["variants"]:
                return {int(r.seed): float(r.top1) for r in rows.itertuples()}
            found = shared.get(_ceiling_key(cfg, cfg["variants"][name]))
            return found[2] if found is not None else {}

        def plain(v: dict, cfg: dict = cfg) -> str:
            """The variant whose ceiling a stepwise or refitting variant shares: same recovery, one step, no refit."""
            twin = {**v, "steps": 1, "reconstruct": 0}
            same = [n for n, w in cfg["variants"].items() if w == twin]
            return same[0] if same else ""

        for name, v in cfg["variants"].items():
            n = int(seeds.get((name, "pruned"), 0))
            if n == 0:
                continue
            top = _f(cell(name, "pruned", "top1")) + (f" ± {sd[(name, 'pruned')]:.2f}" if n > 1 else "")
            ceil = name if v["steps"] == 1 and not v["reconstruct"] else (plain(v) or name)  # else from elsewhere
            mine, theirs = by_seed(name, "pruned"), by_seed(ceil, "ceiling")
            both = sorted(set(mine) & set(theirs))  # paired on the seeds both have (same data order)
            gap = (
                float(np.mean([theirs[k] - mine[k] for k in both]))
                if both
                else cell(ceil, "ceiling", "top1") - cell(name, "pruned", "top1")
            )
            kd_weight = f"{v['kd_weight']:g}" if v["kd"] else "no"
            kd_t = f"{v['kd_t']:g}" if v["kd"] else "-"
            rows.append(
                f"| {name} | {v['lr']:g} | {kd_weight} | {kd_t} | {v['batch']} | {v['epochs']} | "
                f"{v['steps']} | {v['reconstruct'] or 'no'} | {v['ema'] or 'no'} | {v['hint'] or 'no'} | {n} | "
                f"{_f(cell(name, 'pruned', 'top1_noft'))} | {_f(cell(name, 'pruned', 'holdout_top1'))} | "
                f"{top} | {_f(cell(ceil, 'ceiling', 'holdout_top1'))} | "
                f"{_f(cell(ceil, 'ceiling', 'top1'))} | {_f(gap)} | {cell(name, 'pruned', 'finetune_s'):.0f} |"
            )
        steps = df["steps"].fillna(1) if "steps" in df.columns else pd.Series(1, index=df.index)
        ratio = df.loc[(df["net"] == "pruned") & (steps == 1), "macs_ratio"]
        if ratio.empty:
            ratio = df.loc[df["net"] == "pruned", "macs_ratio"]
        best = g.xs("pruned", level="net")["holdout_top1"].idxmax()
        if borrowed:
            rows.append(
                f"\nCeiling cells this recipe did not measure come from {', '.join(sorted(borrowed))}: the unpruned "
                "network through the same recovery (same lr, distillation, epochs, batch, EMA and hints) does not "
                "depend on the cut."
            )
        parts += [
            f"## {cfg['model']} at {ratio.iloc[0]:.3f} of the MACs",
            "",
            f"Cut: `{cfg.get('cut_command') or cfg['cut']}`; machine: {df['host'].iloc[0]} "
            f"({', '.join(sorted(set(df['date'])))}); fine-tuning seconds are wall time on a shared machine (other "
            "rows and jobs ran at the same time), not a speed measurement.",
            "",
            "| recipe | lr | kd weight | kd T | batch | epochs | steps | refit images | EMA | hints | seeds | "
            "pruned, BN recal | pruned held-out | pruned test | ceiling held-out | ceiling test | "
            "gap to ceiling (test) | fine-tuning s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Best pruned held-out top-1: **{best}**.",
            "",
            *([cfg["note"].strip(), ""] if cfg.get("note") else []),
            "```",
            f"python benchmarks/recovery.py --recipe {_rel(recipe)}"
            + ("" if (df["net"] == "ceiling").any() else " --nets pruned"),
            "```",
            "",
        ]
    text = "\n".join(parts)
    md.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(md, text)
    return text


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", help="a recipes/recovery_*.yaml to run")
    p.add_argument("--report", action="store_true", help="write docs/recovery.md from every recovery recipe's CSV")
    p.add_argument("--md", default=str(ROOT / "docs" / "recovery.md"), help="where --report writes")
    p.add_argument("--only", help="comma-separated variant names to run")
    p.add_argument("--nets", default=",".join(NETS), help="pruned, ceiling or both (default)")
    p.add_argument("--progress", action="store_true", help="progress bars")
    args = p.parse_args(argv)
    try:
        if args.report:
            report(sorted((ROOT / "recipes").glob("recovery_*.yaml")), Path(args.md))
            print(f"wrote {args.md}")
            return 0
        if not args.recipe:
            raise LcpError("pass --recipe FILE (or --report)")
        cfg = read_recipe(args.recipe)
        cfg["progress"] = args.progress
        nets = [n for n in args.nets.split(",") if n]
        if not nets or set(nets) - set(NETS):
            raise LcpError(f"--nets takes {', '.join(NETS)}")
        df = run(cfg, args.only.split(",") if args.only else None, nets)
    except LcpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(df).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""lcp's Python API: ``lcp.prune`` (optionally with the post-cut stage on data), next to ``lcp.load`` / ``lcp.save``."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from lcp.cut.alignment import resolve_round_to
from lcp.cut.options import caps_from, check_budget
from lcp.cut.parts import PartsResult, prune_parts
from lcp.cut.pruner import PruneResult
from lcp.cut.transforms import Transforms
from lcp.engine.depth import allow_depth
from lcp.engine.graph import UntraceableModel, build_graph
from lcp.engine.modes import modes_kept
from lcp.errors import LcpError
from lcp.methods import Context, Learned, get_method
from lcp.models.timm_support import refresh_attributes
from lcp.options import changed, field_names, flag_of
from lcp.options import fields as option_fields
from lcp.report import REPORT_COLUMNS
from lcp.run.config import PruneConfig, require_device
from lcp.run.recover import recover, report_row
from lcp.training.data import DataBundle, load_data
from lcp.training.evaluate import device_of
from lcp.training.options import RecoveryOptions
from lcp.training.train import evaluate

# the engine words its refusals for the command line; lcp.prune's caller passes keyword arguments: these keep
# the value unquoted ("round_to 16"), the flags below are translated generically
_PYTHON_WORDS = (
    (re.compile(r"--round-to\b"), "round_to"),
    (re.compile(r"--min-ratio\b"), "min_ratio"),
    (re.compile(r"--(importance|aggregate) (\S+?)(,|:|$)"), r"\1=\2\3"),
)
# then any other flag of an option (not where the text names the command: "lcp prune --budgets"), with its value
# when that is one of the option's choices ("--method lcp" -> "method='lcp'")
_FLAG = re.compile(r"(?<!lcp prune )(?<!lcp search )(--[a-z][a-z0-9-]*)(?: ([\w.:-]+(?:(?:, | or )[\w.:-]+)*))?")


def _keyword(match: re.Match[str]) -> str:
    """A flag of ``PruneConfig`` as its keyword argument (``--budget-type latency`` -> ``budget_type='latency'``,
    ``--no-kd`` -> ``kd=False``); anything else as it was."""
    flag, value = match.group(1), match.group(2)
    rest = f" {value}" if value is not None else ""
    by_flag = {flag_of(f): f for f in option_fields(PruneConfig)}
    f = by_flag.get(flag)
    if f is None and flag.startswith("--no-") and f"--{flag[5:]}" in by_flag:  # an option on by default
        return f"{by_flag[f'--{flag[5:]}'].name}=False{rest}"
    if f is None:
        return match.group(0)
    if flag.startswith("--no-") and f.metadata["flag"] == flag:  # --no-progress: the field is progress
        return f"{f.name}=False{rest}"
    choices = f.metadata["choices"]
    choices = (choices() if callable(choices) else choices) or ()
    parts = re.split(r"(, | or )", value) if value is not None else []  # words, separators, words, ...
    tail = parts[-1][-1] if parts and parts[-1][-1:] in (":", ",") else ""  # "--device cuda: ..." keeps its colon
    if tail:
        parts[-1] = parts[-1][:-1]
    words = parts[0::2]
    named = next((n for n in range(len(words), 0, -1) if all(w in choices for w in words[:n])), 0)
    if named:  # "--method lcp, global" -> "method='lcp', 'global'"; "macs or latency" -> "'macs' or 'latency'"
        quoted = [repr(p) if i % 2 == 0 and i // 2 < named else p for i, p in enumerate(parts)]
        return f"{f.name}=" + "".join(quoted) + tail
    items = words
    if re.fullmatch(r"[0-9.]+", items[0] if items else ""):  # "--budget 0.3" -> "budget=0.3"
        return f"{f.name}={value}"
    return f"{f.name}{rest}"


def _in_python_words(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Re-raise ``fn``'s LcpError (same object, type and attributes) with its flags named as keyword arguments."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LcpError as err:
            text = str(err)
            for pattern, words in _PYTHON_WORDS:
                text = pattern.sub(words, text)
            err.args = (_FLAG.sub(_keyword, text),)
            raise

    return wrapper


@_in_python_words
def prune(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    *,
    budget: float = 0.5,
    budget_type: str = "macs",
    method: str = "global",
    importance: str = "l2",
    aggregate: str = "mean",
    transforms: Transforms | None = None,
    round_to: int | str = 16,
    min_ratio: float = 0.1,
    seed: int = 0,
    check: bool = True,
    batches: Iterable | None = None,
    data: Any = None,
    finetune_epochs: int = 0,
    lr: float = 0.01,
    kd: bool = True,
    recal_batches: int = 20,
    candidates: int | None = None,
    optimizer: str = "legr",
    progress: bool = False,
    ignore: Sequence[str] = (),
    max_removal: Mapping[str, float] | None = None,
    depth: bool = False,
    **options: Any,
) -> PruneResult | PartsResult:
    """Prune ``model`` to ``budget`` x its baseline cost; returns a ``PruneResult`` whose ``.model`` is pruned.

    ``budget=0.5, budget_type="macs"`` keeps 50% of the baseline MACs. ``method``: any registered method
    (``lcp.methods.method_names()``): ``global`` (plain global ranking), ``lcp`` (learned ``transforms``; searched
    on ``data`` when not given), ``uniform``, ``random``, ``lfgcl``, ``amc``, ``ads``, ``lwp``, or one you
    registered. Every result is verified against the masked original and its cost re-counted; a model lcp cannot
    prune safely raises ``LcpError``. The original model is not modified. ``options``: any other option of
    ``lcp prune`` by its Python name (``episodes=...``, ``population=...``, ``device=...``), checked like a
    recipe's. ``ignore``: module-name globs whose output channels are kept whole; ``max_removal``:
    ``{glob: fraction}``, at most that fraction of the channels written by the matching modules is removed;
    ``depth``: the walk may also remove whole residual branches (``lcp.engine.depth``). ``round_to``: widths
    kept in multiples of N (default 16; 1: any width; halved for a group narrower than 4N,
    ``lcp.cut.alignment.group_alignment``), or ``"auto"``: the multiple that runs without a slowdown on
    ``device`` at ``latency_batch``, measured (``lcp.cut.alignment``).

    With ``data`` (a data set name or ImageFolder path, an ``lcp.training.data.DataBundle``, or a dict with
    ``train`` and ``test`` loaders, for the recovery only: a method that learns needs a data set it can split) the
    pruned model goes through the same post-cut stage as ``lcp prune`` (with ``finetune_epochs=0``, the default,
    a least-squares refit of the cut's layers to the original's outputs, ``reconstruct_images``; BatchNorm
    recalibration, evaluation, ``finetune_epochs`` of fine-tuning, distillation with ``kd``), and
    ``result.report`` is the one-row report as a pandas DataFrame.

    A model torch.fx cannot trace whole (a torchvision detector: ``example_inputs=([image],)``) is pruned by its
    traceable parts (``lcp.cut.parts``): each part (a backbone with its feature pyramid, a box head) keeps
    ``budget`` of its own MACs and is verified on the inputs it was called with; the result is a
    ``PartsResult`` whose ``.model`` is the whole model, pruned there and unchanged elsewhere. Data-free
    methods only (``global``, ``uniform``, ``random``); recover it with your own training loop.
    """
    check_budget(budget, budget_type)
    if isinstance(ignore, str):  # one glob, not its characters
        ignore = (ignore,)
    elif isinstance(ignore, Iterable) and not isinstance(ignore, (bytes, Mapping)):  # a set, a generator
        ignore = tuple(ignore)
    _check_types(model, example_inputs, ignore, data, transforms)
    if max_removal is not None and not isinstance(max_removal, Mapping):
        raise LcpError(f"max_removal must be a dict {{glob: fraction}}, e.g. {{'layer1.*': 0.3}}, not {max_removal!r}")
    opts = PruneConfig.from_mapping(
        dict(
            budget=budget,
            budget_type=budget_type,
            method=method,
            importance=importance,
            aggregate=aggregate,
            round_to=round_to,
            min_ratio=min_ratio,
            seed=seed,
            finetune_epochs=finetune_epochs,
            lr=lr,
            kd=kd,
            recal_batches=recal_batches,
            candidates=candidates,
            optimizer=optimizer,
            progress=progress,
            ignore=list(ignore) or None,
            max_removal=[f"{g}={f}" for g, f in (max_removal or {}).items()] or None,
            depth=depth,
            **options,
        ),
        "lcp.prune",
    )
    _refuse_unused(opts, data)
    require_device(opts.device)
    chosen = get_method(method)
    chosen.check(opts, opts.all_budgets())
    if transforms is not None and chosen.order != "lcp":
        raise LcpError(f"transforms are the learned compensation of method='lcp'; method {method!r} would ignore them")
    if isinstance(data, Mapping) and chosen.learns_from_data and transforms is None:
        raise LcpError(
            f"method {method!r} learns on a held-out split of the training images, which lcp makes from a data set: "
            "pass data= as a data set name, an ImageFolder path or a DataBundle (a dict of loaders serves the "
            "recovery only)"
        )
    bundle = _bundle(data, model, example_inputs, opts)
    if example_inputs is None:
        if bundle is None and not isinstance(data, Mapping):
            raise LcpError("pass example_inputs (e.g. torch.zeros(1, 3, 32, 32)) or data")
        size = bundle.input_size if bundle is not None else tuple(next(iter(data["train"]))[0].shape[1:])
        example_inputs = torch.zeros(1, *size)
    try:
        graph = build_graph(model, example_inputs, ignore=opts.ignore or ())
    except UntraceableModel as e:
        return _prune_parts(model, example_inputs, chosen, opts, budget, check, transforms, data, e)
    graph.limit_removal(caps_from(opts.max_removal))
    allow_depth(graph, opts.depth)
    opts, _ = resolve_round_to(opts, graph)
    if transforms is not None:
        transforms = _fitted(transforms, graph)
        transforms.check_scores(opts, "transforms")
    ctx = Context(
        graph, opts, bundle, out=None, log=lambda msg: None, name=type(model).__name__, verify=check, batches=batches
    )
    t0 = time.perf_counter()
    learned = Learned(transforms=transforms) if transforms is not None else chosen.learn(ctx)
    search_s = time.perf_counter() - t0 if transforms is None else 0.0
    result = chosen.cut(ctx, learned, budget)
    refresh_attributes(result.model, model, graph.example_inputs)  # timm: num_features etc. of the pruned widths
    if data is not None:
        result.report = _recover_and_report(
            result, model, bundle if bundle is not None else data, opts, budget, search_s
        )
    return result


def _fitted(transforms: Transforms, graph: Any) -> Transforms:
    """In ``graph``'s group order, matched by name (unnamed ones: by position, if as many as the groups)."""
    t = transforms
    if not t.groups and len(t.alpha) == len(t.kappa) == len(graph.groups):
        return Transforms(np.asarray(t.alpha), np.asarray(t.kappa), [g.name for g in graph.groups], t.learned_with)
    return Transforms.from_json(t.to_json(), graph)


# lcp prune's options of a run folder and of the model it builds by name: lcp.prune gets the model itself
_CLI_ONLY = ("model", "checkpoint", "pretrained", "baseline_epochs", "out", "resume", "overwrite")


def _check_types(model: Any, example_inputs: Any, ignore: Any, data: Any, transforms: Any) -> None:
    """One line for an argument of the wrong type (it failed deep inside, as an AttributeError or TypeError)."""
    if not isinstance(model, nn.Module):
        raise LcpError(
            f"lcp.prune takes the model itself (an nn.Module, e.g. lcp.create_model('resnet20')), not a "
            f"{type(model).__name__}"
        )
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    bad = [v for v in inputs if not (v is None or isinstance(v, (torch.Tensor, tuple, list, dict)))]
    if example_inputs is not None and bad:
        shown = "a shape" if isinstance(bad[0], int) else f"a {type(bad[0]).__name__}"
        raise LcpError(
            f"example_inputs are torch tensors (e.g. torch.zeros(1, 3, 32, 32); torch.from_numpy for an array), "
            f"not {shown}"
        )
    if not isinstance(ignore, (tuple, list)) or not all(isinstance(g, str) for g in ignore):
        raise LcpError(f"ignore takes module-name globs (a string or a list of them, e.g. 'layer1.*'), not {ignore!r}")
    if isinstance(data, Mapping) and not {"train", "test"} <= set(data):
        raise LcpError(f"data as a dict holds 'train' and 'test' loaders, not {sorted(map(str, data))}")
    if data is not None and not isinstance(data, (str, Path, Mapping, DataBundle)):
        raise LcpError(
            "data is a data set name, an ImageFolder path, a DataBundle or a dict of 'train' and 'test' loaders, "
            f"not a value of type {type(data).__name__}"
        )
    if transforms is not None and not isinstance(transforms, Transforms):
        raise LcpError(
            "transforms is an lcp.cut.transforms.Transforms (a result's .transforms, or "
            f"Transforms.from_json(json.load(f), lcp.build_graph(model, x))), not a {type(transforms).__name__}"
        )


def _refuse_unused(opts: PruneConfig, data: Any) -> None:
    """One line for an option lcp.prune would silently ignore."""
    if opts.structure_from:
        raise LcpError(
            "structure_from is an option of lcp prune, not of lcp.prune: run lcp prune --structure-from DIR, "
            "or load the pruned network with lcp.load(DIR)"
        )
    if opts.budgets:
        raise LcpError("lcp.prune cuts one budget: pass budget=, and call it once per budget (or lcp prune --budgets)")
    cli_only = changed(opts, _CLI_ONLY)
    if cli_only:
        raise LcpError(f"{cli_only[0]} is an option of lcp prune; lcp.prune takes the model and writes no folder")
    if data is None:
        unused = changed(opts, ["holdout", "input_size", *field_names(RecoveryOptions)])
        acting = {  # these two are refused when they would act (lcp.prune's defaults differ from lcp prune's)
            "finetune_epochs": opts.finetune_epochs > 0,
            "reconstruct_images": opts.reconstruct_images not in ("auto", 0),
        }
        unused = [n for n in unused if n not in acting] + [n for n, on in acting.items() if on]
        if unused:
            raise LcpError(f"{unused[0]} acts on data: pass data= (a data set, an ImageFolder path or loaders)")


def _prune_parts(
    model: nn.Module,
    example_inputs: Any,
    chosen: Any,
    opts: PruneConfig,
    budget: float,
    check: bool,
    transforms: Transforms | None,
    data: Any,
    untraced: UntraceableModel,
) -> PartsResult:
    """A model torch.fx cannot trace whole: its traceable parts pruned in place (``lcp.cut.parts``)."""
    unsupported = [
        what
        for what, bad in (
            (f"method {opts.method} (it learns from data on the whole model)", chosen.learns_from_data),
            ("transforms", transforms is not None),
            ("data (recover the returned model with your own training loop)", data is not None),
            ("depth", opts.depth),
            (f"a {opts.budget_type} budget", opts.budget_type == "latency"),
            ("max_removal", bool(opts.max_removal)),
        )
        if bad
    ]
    if unsupported:
        raise LcpError(f"{untraced}; its traceable parts can be pruned, but not with {', '.join(unsupported)}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)

    aligned: list[PruneConfig] = []  # --round-to auto: measured on the first part, reused by the others

    def cut(graph: Any, name: str) -> PruneResult:
        if not aligned:
            aligned.append(resolve_round_to(opts, graph)[0])
        ctx = Context(graph, aligned[0], None, out=None, log=lambda msg: None, name=name, verify=check)
        return chosen.cut(ctx, chosen.learn(ctx), budget)

    return prune_parts(model, example_inputs, cut, ignore=opts.ignore or (), untraced=str(untraced))


def _bundle(data: Any, model: nn.Module, example_inputs: Any, opts: PruneConfig) -> DataBundle | None:
    """A DataBundle from a data set name/path, or the bundle itself (None for plain loaders)."""
    if data is None or isinstance(data, Mapping):
        return None
    if isinstance(data, (str, Path)):
        first = example_inputs[0] if isinstance(example_inputs, (tuple, list)) and example_inputs else example_inputs
        if opts.input_size:
            size = tuple(opts.input_size)
        elif isinstance(first, torch.Tensor) and first.dim() == 4:
            size = tuple(first.shape[1:])
        else:
            size = (3, 32, 32)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        kw = {k: tuple(cfg[k]) for k in ("mean", "std") if k in cfg}
        return load_data(str(data), input_size=size, holdout=opts.holdout, seed=0, **kw)  # lcp prune's split
    return data


def _recover_and_report(
    result: PruneResult, original: nn.Module, data: Any, opts: PruneConfig, budget: float, search_s: float
) -> pd.DataFrame:
    """The post-cut stage of ``lcp prune`` on ``data``; the one-row report (``REPORT_COLUMNS``, then
    ``reconstructed_layers`` where the cut was refitted)."""
    test = data.loader("test", 256) if isinstance(data, DataBundle) else data["test"]
    device = device_of(original, None)
    with modes_kept(original):  # evaluated and a teacher in eval mode; the caller's model is left as it was
        try:
            top1_base = evaluate(original, test, device=opts.device)["top1"]
            original.cpu()
            numbers = recover(result, original, data, opts)
        finally:
            original.to(device)
    result.model.cpu()
    row = report_row(
        result,
        opts,
        model=getattr(original, "lcp_name", None) or type(original).__name__,  # lcp prune's name, where it has one
        dataset=getattr(data, "source", "loaders"),
        budget=budget,
        numbers={"top1_base": top1_base, **numbers, "search_s": search_s},
    )
    keys = REPORT_COLUMNS + ["reconstructed_layers"] * ("reconstructed_layers" in row)
    return pd.DataFrame([{k: row.get(k) for k in keys}])

"""Save a pruned model portably and rebuild it without pickle.

``model.safetensors`` holds the weights; ``channels.json`` holds what rebuilds the architecture: the model's
name and the stable keys of the removed channel units. ``load`` re-creates the model by name, traces it,
removes the same units (the same surgery that pruned it) and loads the weights strictly.
"""

from __future__ import annotations

import fnmatch
import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from lcp._version import __version__
from lcp.engine.connections import ConnectionGraph
from lcp.engine.depth import depth_units
from lcp.engine.graph import ChannelGraph, build_graph
from lcp.engine.modes import modes_kept
from lcp.engine.surgery import apply_plan
from lcp.errors import LcpError
from lcp.io import (
    OUTPUT_PATTERNS,
    atomic_write_json,
    ensure_dir,
    load_tensors,
    os_reason,
    read_json,
    save_tensors,
    users_files,
    with_metadata_of,
)
from lcp.models.factory import check_weights, create_model
from lcp.models.timm_support import refresh_attributes, write_timm_config
from lcp.report import write_report

CHANNELS_FORMAT = 1


def widths(model: nn.Module) -> dict[str, list[int]]:
    """Channel counts of every conv, linear and norm of a model (what ``load`` checks after rebuilding)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            out[name] = [m.out_channels, m.in_channels, m.groups]
        elif isinstance(m, nn.Linear):
            out[name] = [m.out_features, m.in_features]
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            out[name] = [m.num_features]
    return out


def channels_spec(
    graph: ChannelGraph,
    removed: np.ndarray,
    pruned: nn.Module,
    *,
    model_name: str,
    num_classes: int | None,
    input_size: tuple[int, ...],
    extra: dict[str, Any] | None = None,
) -> dict:
    """The ``channels.json`` document for a pruned model."""
    spec = {
        "format": CHANNELS_FORMAT,
        "model": model_name,
        "num_classes": None if num_classes is None else int(num_classes),
        "input_size": [int(s) for s in input_size],
        "removed_units": [graph.units[u].key for u in np.nonzero(removed)[0].tolist()],
        "graph_module": isinstance(pruned, torch.fx.GraphModule),
        "widths": widths(pruned),
        "versions": {"lcp": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    try:
        import timm

        spec["versions"]["timm"] = timm.__version__
    except ImportError:
        pass
    spec.update(extra or {})
    return spec


def output_check(model: nn.Module, input_size: Sequence[int]) -> list[float]:
    """Sum and absolute sum (float64) of ``model``'s eval-mode outputs on a fixed random input: ``load`` compares
    them, so a model rebuilt differently (another definition, other constructor arguments) is refused."""
    p = next(model.parameters(), None)
    x = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0))
    x = x.to(p.device, p.dtype) if p is not None and p.is_floating_point() else x
    with modes_kept(model), torch.no_grad():
        out = model.eval()(x)
    tensors = [out] if isinstance(out, torch.Tensor) else [t for t in _leaves(out) if isinstance(t, torch.Tensor)]
    total = sum(float(t.double().sum()) for t in tensors)
    return [total, sum(float(t.double().abs().sum()) for t in tensors)]


def _leaves(out: Any) -> list[Any]:
    if isinstance(out, dict):
        return [v for x in out.values() for v in _leaves(x)]
    if isinstance(out, (list, tuple)):
        return [v for x in out for v in _leaves(x)]
    return [out]


def write(out_dir: str | Path, model: nn.Module, spec: dict) -> None:
    """Write ``model.safetensors`` and ``channels.json`` into ``out_dir`` (atomically, no pickle)."""
    out = Path(out_dir)
    ensure_dir(out, "folder", "save the model elsewhere")
    spec = {**spec, "output_check": output_check(model, spec["input_size"])}
    save_tensors(model.state_dict(), out / "model.safetensors", metadata={"format": "lcp", "model": spec["model"]})
    atomic_write_json(out / "channels.json", spec)
    write_timm_config(out, spec)  # timm models: config.json for timm.create_model("local-dir:DIR")


def save(result: Any, out_dir: str | Path, *, model_name: str | None = None, overwrite: bool = False) -> Path:
    """Save a ``PruneResult`` (from ``lcp.prune``) so that ``lcp.load(out_dir)`` rebuilds it.

    ``model_name`` is the name ``lcp.create_model`` builds the original from; models made by
    ``lcp.create_model`` remember it. Writes model.safetensors, channels.json, transforms.json and, when the
    result has one, report.csv. A folder that already holds a pruned model or a run is refused unless
    ``overwrite=True``, which also removes the old model's other outputs (``old_outputs``: what save and lcp
    export wrote, or a run's files); the user's own files stay. A ``model_name`` that does not rebuild the
    original is refused before anything is written.
    """
    if isinstance(result, nn.Module) or not hasattr(result, "model"):
        raise LcpError(f"lcp.save takes what lcp.prune returns (a PruneResult), not a {type(result).__name__}")
    if not hasattr(result, "graph"):  # a PartsResult: no channel graph of the whole model to rebuild it from
        raise LcpError(
            "lcp.save keeps models pruned whole; a model pruned by its traceable parts is kept in memory "
            "(result.model): fine-tune it there and save its state_dict, or export it with torch.export"
        )
    graph = result.graph
    inputs = graph.example_inputs
    if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor) or inputs[0].dim() != 4:
        raise LcpError(
            "lcp.save keeps models that take one image batch (N, C, H, W); this one was pruned on other inputs: "
            "save result.model's state_dict, or export it with torch.export"
        )
    name = model_name or getattr(graph.model, "lcp_name", None)
    if name is None:
        raise LcpError("lcp.save needs model_name= (the lcp.create_model name of the original model)")
    # the arguments create_model got, unless model_name names another builder than the one that made the model
    same = model_name is None or model_name == getattr(graph.model, "lcp_name", None)
    kwargs = dict(getattr(graph.model, "lcp_kwargs", {}) if same else {})
    try:
        json.dumps(kwargs)
    except (TypeError, ValueError):
        raise LcpError(
            f"lcp.save records the arguments {name} was created with as JSON, and {sorted(kwargs)} are not all "
            "JSON values: create the model with names or numbers (e.g. act_layer='gelu')"
        ) from None
    num_classes = kwargs.pop("num_classes", None)
    if num_classes is None:
        num_classes = output_classes(result.model, graph.example_inputs)
    spec = channels_spec(
        graph,
        result.plan.removed,
        result.model,
        model_name=name,
        num_classes=num_classes,
        input_size=tuple(graph.example_inputs[0].shape[1:]),
        extra={
            **({"model_kwargs": kwargs} if kwargs else {}),
            "budget": result.plan.budget,
            "budget_type": result.plan.budget_type,
            "method": result.plan.method,
            "macs": result.plan.macs,
            "params": result.plan.params,
            **result.info.get("spec", {}),  # what the channel plan does not hold (removed DenseNet connections)
        },
    )
    out = Path(out_dir)
    taken = [n for n in ("channels.json", "run.json", "model.safetensors") if (out / n).exists()]
    if taken and not overwrite:
        raise LcpError(
            f"{out} already holds a pruned model or a run ({taken[0]}): save elsewhere or pass overwrite=True"
        )
    check_rebuilds(spec, graph.model)  # builds the model once: after the cheap refusal
    old = old_outputs(out) if taken else {}
    write(out, result.model, spec)
    atomic_write_json(out / "transforms.json", result.transforms.to_json())
    if result.report is not None:
        write_report(result.report.iloc[0].to_dict(), out / "report.csv")
    for path, ident in old.items():  # what this save did not rewrite describes the old model
        if _identity(path) == ident:
            try:
                path.unlink()
            except OSError as e:
                raise LcpError(f"saved {out}, but could not remove the old output {path.name}: {os_reason(e)}") from e
    return out


def check_rebuilds(spec: dict, model: nn.Module) -> None:
    """Refuse (one line) a ``spec`` whose model name and arguments do not rebuild ``model``, the unpruned
    original: ``load`` could never rebuild the pruned one. Builds the model once, runs nothing."""
    name = spec["model"]
    try:
        fresh = original(spec)
    except Exception as e:  # LcpError (an unknown name), or the constructor's own error on these arguments
        why = str(e) if isinstance(e, LcpError) else f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
        raise LcpError(f"model_name {name!r} is not a model lcp can build: {why}") from None
    mine, built = widths(model), widths(fresh)
    if mine != built:
        layer = next(n for n in [*mine, *built] if mine.get(n) != built.get(n))
        raise LcpError(
            f"model_name {name!r} builds a network with other layers than the one pruned ({layer}: "
            f"{built.get(layer, 'absent')} there, {mine.get(layer, 'absent')} in the pruned model's original); "
            "pass the create_model name (and arguments) the original was built with"
        )


#: what ``save`` and ``lcp export``'s defaults write into a folder (a run writes more: its run.json says whose is what)
SAVED_NAMES = (
    *("model.safetensors", "channels.json", "transforms.json", "report.csv", "layers.csv", "widths.png"),
    *("bench.csv", "model.onnx", "model.onnx.data", "model.ts.pt", "model.pt2"),
)


def old_outputs(out: Path) -> dict[Path, tuple[int, int] | None]:
    """lcp's files at the top of ``out``, each with its identity, so that the ones a new save does not replace
    can be told apart and removed: a run's (``OUTPUT_PATTERNS``, less those its run.json records as the user's),
    or in a folder ``save`` made, only the names ``save`` and ``lcp export`` write (the rest is the user's)."""
    if (out / "run.json").is_file():
        users = users_files(out / "run.json")
        ours = [
            p
            for p in out.iterdir()
            if p.name not in users and any(fnmatch.fnmatchcase(p.name, pat) for pat in OUTPUT_PATTERNS)
        ]
    else:
        ours = [out / n for n in SAVED_NAMES]
    return {p: _identity(p) for p in sorted(ours) if p.is_file()}


def _identity(path: Path) -> tuple[int, int] | None:
    """Inode and modification time (an atomic rewrite changes both); None once the file is gone."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def output_classes(model: nn.Module, example_inputs: tuple) -> int | None:
    """The width of a classifier's (N, classes) output; None for other outputs (the model's default is kept)."""
    with modes_kept(model), torch.no_grad():
        out = model.eval()(*tree_map_only(torch.Tensor, torch.zeros_like, tuple(example_inputs)))
    return int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else None


MAX_SIDE = 8192  # an input side larger than this in channels.json is damage, not a model


def _whole(v: Any, low: int = 1, high: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)


def check_spec(spec: Any) -> None:
    """Refuse (one line) a channels.json whose fields lack, have the wrong type or are out of range."""
    if not isinstance(spec, dict):
        raise LcpError("channels.json is damaged: it must be a JSON object")
    missing = [k for k in ("model", "num_classes", "input_size", "removed_units") if k not in spec]
    if missing:
        raise LcpError(f"channels.json is incomplete: it has no {', '.join(missing)}")
    size, keys, conns = spec["input_size"], spec["removed_units"], spec.get("removed_connections")
    problems = {
        "model must be a model name": not isinstance(spec["model"], str) or not spec["model"],
        "num_classes must be a whole number or null": spec["num_classes"] is not None
        and not _whole(spec["num_classes"], 0),
        "data must be the data set name or folder it was pruned on": not isinstance(
            spec.get("data"), (str, type(None))
        ),
        "model_kwargs must be an object of create_model arguments": not isinstance(spec.get("model_kwargs", {}), dict)
        or "num_classes" in spec.get("model_kwargs", {}),
        "output_check must be two numbers": "output_check" in spec
        and not (
            isinstance(spec["output_check"], list)
            and len(spec["output_check"]) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec["output_check"])
        ),
        f"input_size must be three whole numbers C H W (1 to {MAX_SIDE})": not (
            isinstance(size, list) and len(size) == 3 and all(_whole(v, 1, MAX_SIDE) for v in size)
        ),
        "removed_units must be a list of unit names": not (
            isinstance(keys, list) and all(isinstance(k, str) for k in keys)
        ),
        "removed_connections must be a list of [consumer, source] names": conns is not None
        and not (
            isinstance(conns, list)
            and all(isinstance(c, list) and len(c) == 2 and all(isinstance(n, str) for n in c) for c in conns)
        ),
        "widths must map module names to lists of whole numbers": "widths" in spec
        and not (
            isinstance(spec["widths"], dict)
            and all(isinstance(w, list) and all(_whole(v, 0) for v in w) for w in spec["widths"].values())
        ),
    }
    bad = [what for what, wrong in problems.items() if wrong]
    if bad:
        raise LcpError(f"channels.json is damaged: {bad[0]}")


def original(spec: dict) -> nn.Module:
    """A fresh unpruned model as ``spec`` (channels.json) records it: name, classes, create_model arguments."""
    return create_model(spec["model"], num_classes=spec["num_classes"], **spec.get("model_kwargs", {}))


def rebuild(spec: dict, base_model: nn.Module | None = None) -> nn.Module:
    """The pruned architecture described by ``spec`` (weights of ``base_model``, or a fresh model)."""
    check_spec(spec)
    name, keys = spec["model"], spec["removed_units"]
    input_size = tuple(spec["input_size"])
    model = base_model if base_model is not None else original(spec)
    graph = build_graph(model, torch.zeros(1, *input_size))
    if spec.get("removed_connections"):  # connection-pruned DenseNet (methods ads, lwp)
        cg = ConnectionGraph(graph)
        pruned = cg.apply(cg.from_names(spec["removed_connections"]))
    else:
        pruned = apply_plan(graph, removed_mask(graph, keys, f"channels.json does not fit {name}"))
        refresh_attributes(pruned, model, graph.example_inputs)  # timm: num_features, feature_info of the pruned widths
    if "widths" in spec and widths(pruned) != spec["widths"]:
        raise LcpError(
            f"rebuilt {name} does not have the widths recorded in channels.json; "
            "the model definition changed since it was saved"
        )
    return pruned


def removed_mask(graph: ChannelGraph, keys: list[str], what: str) -> np.ndarray:
    """Bool per unit of ``graph``: the units named by ``keys`` (channels.json's ``removed_units``); ``what``
    starts the error when a key is unknown or names a unit that cannot be pruned."""
    index = {u.key: u.index for u in graph.units}
    missing = [k for k in keys if k not in index]
    if missing:
        raise LcpError(
            f"{what}: unknown channel units ({', '.join(missing[:3])}); was it written by another version of the model?"
        )
    fixed = [k for k in keys if not graph.units[index[k]].prunable]
    if fixed:
        raise LcpError(f"{what}: channel units {', '.join(fixed[:3])} cannot be pruned in this model")
    removed = np.zeros(len(graph.units), dtype=bool)
    removed[[index[k] for k in keys]] = True
    emptied = [g for g in graph.groups if removed[np.asarray(g.units)].all() and g.index not in depth_units(graph)]
    if emptied:  # a depth unit's group may go whole: its residual branch goes with it (lcp.engine.depth)
        raise LcpError(f"{what}: it removes every channel of {emptied[0].name} (a layer needs at least one)")
    return removed


def read_spec(folder: Path) -> dict:
    """``channels.json`` of a pruned folder; one line when there is none (a ``--budgets`` run: its subfolders)."""
    if not (folder / "channels.json").is_file():
        subs = sorted(p.parent.name for p in folder.glob("budget_*/channels.json"))
        hint = (
            f": it holds one per budget, pass {folder / subs[0]} ({', '.join(subs)})"
            if subs
            else "; pass the --out folder of a prune run"
        )
        raise LcpError(f"{folder} holds no pruned model (channels.json missing){hint}")
    return read_json(folder / "channels.json", what="channels.json")


def load(out_dir: str | Path) -> nn.Module:
    """Rebuild the pruned model saved in ``out_dir`` and load its weights (eval mode)."""
    out = Path(out_dir)
    spec = read_spec(out)
    model = rebuild(spec)
    load_weights(model, load_tensors(out / "model.safetensors"), f"model.safetensors in {out}")
    if "output_check" in spec:  # folders written before 2026-12-06 have none
        saved, now = spec["output_check"], output_check(model, spec["input_size"])
        scale = max(abs(saved[1]), 1e-6)
        if any(abs(a - b) > 1e-3 * scale for a, b in zip(saved, now)):
            raise LcpError(
                f"the rebuilt {spec['model']} does not compute what was saved in {out} (its outputs differ): the "
                "model's definition or its create_model arguments changed since it was saved"
            )
    return model.eval()


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` (read from ``where``) into ``model`` strictly, after ``check_weights``; one line if not."""
    check_weights(state, model, where)
    try:
        model.load_state_dict(with_metadata_of(model, state), strict=True)
    except (RuntimeError, ValueError) as e:  # ValueError: a module's own check of the state (MNASNet's version)
        first = str(e).strip().splitlines()
        raise LcpError(
            f"{where} does not fit the rebuilt model: {first[1].strip() if len(first) > 1 else first[0]}"
        ) from None

"""Pruned models as timm models: entries ``lcp_<arch>`` and a runner for timm's scripts.

* ``register_all()`` (or ``register(arch)``) adds a timm model entry ``lcp_<arch>`` for every timm architecture.
  ``timm.create_model("lcp_resnet50", pruned_dir="runs/r50")`` rebuilds the pruned model of an lcp output
  folder (``create_pruned``): the architecture from ``channels.json`` (the original is created by name and the
  same channel units are removed, no pickle), the weights from ``model.safetensors``. timm's arguments keep
  working: ``num_classes``, ``drop_rate``, ``drop_path_rate``, ``features_only`` / ``out_indices``,
  ``checkpoint_path``.
* ``timm.create_model("local-dir:runs/r50")`` works as well (after ``register_all()``), from the ``config.json``
  lcp writes beside ``channels.json``.
* ``python -m lcp.models.timm_hub SCRIPT [ARGS...]`` runs a script (timm's ``train.py`` or ``validate.py``) with
  the entries registered: ``--model lcp_resnet50 --model-kwargs pruned_dir=runs/r50`` or ``--model local-dir:runs/r50``.
"""

from __future__ import annotations

import dataclasses
import runpy
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lcp.errors import LcpError
from lcp.io import load_tensors, read_json
from lcp.models import store
from lcp.models.factory import create_model, resolve_name
from lcp.models.timm_support import ENTRY_MODULE, PREFIX, clean_cfg, features_model, reset_classifier, timm_arch

# ---------------------------------------------------------------------------------------------- registration


def _entry_module() -> types.ModuleType:
    mod = sys.modules.get(ENTRY_MODULE)
    if mod is None:
        mod = types.ModuleType(ENTRY_MODULE, "timm model entries lcp_<arch>, registered by lcp.models.timm_support")
        mod.__all__ = []
        mod.default_cfgs = {}
        sys.modules[ENTRY_MODULE] = mod
    return mod


def register(arch: str) -> str:
    """Register the timm entry ``lcp_<arch>`` (idempotent); returns its name."""
    import timm
    from timm.models import register_model

    arch = timm_arch(arch)
    name = PREFIX + arch
    mod = _entry_module()
    if getattr(mod, name, None) is not None and timm.is_model(name):
        return name

    def entry(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return create_pruned(arch=arch, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = ENTRY_MODULE
    entry.__doc__ = (
        f"{arch} pruned by lcp: timm.create_model('{name}', pruned_dir=DIR) rebuilds the pruned model "
        "of an lcp output folder (timm scripts: --model-kwargs pruned_dir=DIR)."
    )
    # the arch's data config (input size, mean, std, crop) without weights, for timm.data.resolve_data_config
    mod.default_cfgs[name] = clean_cfg(timm.get_pretrained_cfg(arch), architecture=name)
    setattr(mod, name, entry)
    register_model(entry)
    return name


def register_all() -> list[str]:
    """Register ``lcp_<arch>`` for every timm architecture (about 1400 names; a fraction of a second)."""
    import timm

    return [register(a) for a in timm.list_models() if not a.startswith(PREFIX)]


# ------------------------------------------------------------------------------------------- building models


def _pruned_folder(pruned_dir: Any, pretrained_cfg: Any, arch: str | None) -> Path:
    if pruned_dir is None and isinstance(pretrained_cfg, dict) and pretrained_cfg.get("source") == "local-dir":
        pruned_dir = pretrained_cfg.get("file")  # timm.create_model("local-dir:DIR") with lcp's config.json
    if pruned_dir is None:
        entry = PREFIX + (arch or "<arch>")
        raise LcpError(
            f"{entry} rebuilds a model pruned by lcp: pass its output folder, "
            f"timm.create_model('{entry}', pruned_dir='runs/x') (timm scripts: --model-kwargs "
            "pruned_dir=runs/x)"
        )
    folder = Path(pruned_dir).expanduser()
    if not (folder / "channels.json").is_file():
        raise LcpError(f"{folder} holds no pruned model (channels.json missing); pass the --out folder of lcp prune")
    return folder


def create_pruned(
    pruned_dir: str | Path | None = None,
    *,
    arch: str | None = None,
    pretrained: bool = False,
    pretrained_cfg: Any = None,
    pretrained_cfg_overlay: dict | None = None,
    cache_dir: Any = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    features_only: bool = False,
    out_indices: Any = None,
    feature_cls: Any = None,
    pruned_weights: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """The pruned timm model saved in ``pruned_dir`` by ``lcp prune`` / ``lcp.save`` (what ``lcp_<arch>`` builds).

    ``pruned_weights=False`` keeps the fresh initialisation (the pruned architecture only); ``pretrained`` is
    accepted for timm's scripts and changes nothing (the weights are the folder's). Other keyword arguments
    go to the original model's constructor (e.g. ``drop_path_rate``), which must keep its channel widths.
    Returned in train mode, like ``timm.create_model``.
    """
    del pretrained, cache_dir  # the weights are the folder's
    folder = _pruned_folder(
        pruned_dir,
        pretrained_cfg if not dataclasses.is_dataclass(pretrained_cfg) else dataclasses.asdict(pretrained_cfg),
        arch,
    )
    spec = read_json(folder / "channels.json", what="channels.json")
    name = str(spec.get("model"))
    source, canonical = resolve_name(name)
    if source != "timm":
        raise LcpError(f"{folder} holds a pruned {name} ({source} model), not a timm model: load it with lcp.load")
    if arch is not None and not canonical.startswith("hf-hub:") and timm_arch(canonical) != arch:
        raise LcpError(
            f"{folder} holds a pruned {name}, not a {arch}: use "
            f"timm.create_model('{PREFIX}{timm_arch(canonical)}', ...)"
        )
    size = tuple(spec.get("input_size", (3, 224, 224)))
    if in_chans not in (None, size[0]):
        raise LcpError(f"{folder} holds a model with {size[0]} input channels, not {in_chans}")
    base = create_model(name, num_classes=spec.get("num_classes"), **{**spec.get("model_kwargs", {}), **kwargs})
    model = store.rebuild(spec, base_model=base)
    if pruned_weights:
        store.load_weights(model, load_tensors(folder / "model.safetensors"), f"model.safetensors in {folder}")
    cfg = clean_cfg(getattr(base, "pretrained_cfg", None), **(pretrained_cfg_overlay or {}))
    model.pretrained_cfg = model.default_cfg = cfg
    model.lcp_dir = str(folder)
    if num_classes is not None and num_classes != spec.get("num_classes"):
        reset_classifier(model, num_classes, torch.zeros(1, *size))
    if features_only:
        return features_model(
            model,
            base,
            timm_arch(canonical) if not canonical.startswith("hf-hub:") else arch,
            torch.zeros(1, *size),
            out_indices=out_indices,
            feature_cls=feature_cls,
            kwargs=kwargs,
        )
    return model.train()


USAGE = """usage: python -m lcp.models.timm_hub SCRIPT [ARGS...]

Runs SCRIPT (timm's train.py, validate.py, or any script that calls timm.create_model) with the timm entries
lcp_<arch> registered, e.g.
  python -m lcp.models.timm_hub validate.py --data-dir DATA --model lcp_resnet50 --model-kwargs pruned_dir=runs/r50
  python -m lcp.models.timm_hub train.py --data-dir DATA --model local-dir:runs/r50 --epochs 10 --lr 0.01
"""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lcp.models.timm_hub SCRIPT [ARGS...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    script = argv[0]
    if not Path(script).is_file():
        print(
            f"lcp.models.timm_support: error: {script} is not a file (want timm's train.py or validate.py)",
            file=sys.stderr,
        )
        return 2
    register_all()
    sys.argv = [script, *argv[1:]]
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    from lcp.models import timm_hub as _canonical  # register into the importable module, not this __main__ copy

    sys.exit(_canonical.main())

"""timm support: pruned timm models keep working as timm models, and the CNN-like rule of the support matrix.

* ``refresh_attributes``: after a cut, ``num_features``, ``head_hidden_size`` and the ``feature_info`` channel
  counts of a pruned timm model are measured on it, so ``reset_classifier`` and feature wrappers fit;
  ``reset_classifier`` and ``features_model`` give a pruned model a new head or timm's feature wrapper.
* ``timm_config`` / ``write_timm_config``: the timm ``config.json`` lcp writes beside ``channels.json``, so
  ``timm.create_model("local-dir:runs/r50")`` works (the entries themselves: ``lcp.models.timm_hub``).
* ``is_cnn_like``: the rule that picks the CNN-like timm models for ``benchmarks/support_matrix.py``.

A pruned model whose forward code lcp had to rewrite (split sizes or channel slices) is a ``torch.fx.GraphModule``
rather than timm's class: it has timm's attributes (``num_classes``, ``pretrained_cfg``, ...) but not its methods
(``forward_features``, ``reset_classifier``); a new ``num_classes`` still works (the classifier module is
replaced), ``features_only`` does not (it says so).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from lcp.errors import LcpError
from lcp.io import atomic_write_json
from lcp.models.factory import resolve_name

PREFIX = "lcp_"
ENTRY_MODULE = "lcp.timm_entries"  # a namespace module holding the registered entry functions
CONFIG_NAME = "config.json"

#: timm attributes a GraphModule result does not get from fx and that timm's scripts read
_COPY_ATTRS = (
    "num_classes",
    "num_features",
    "head_hidden_size",
    "pretrained_cfg",
    "default_cfg",
    "feature_info",
    "drop_rate",
    "output_fmt",
    "pretrained_model_args",
    "_model_args",
    "_traits",
    "grad_checkpointing",
)
#: pretrained_cfg keys that say where weights come from: dropped, lcp's weights come from the output folder
_WEIGHT_KEYS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "tag", "license")


def timm_arch(name: str) -> str:
    """timm architecture of a model name (tag and deprecated alias resolved)."""
    import timm
    from timm.models import get_deprecated_models
    from timm.models._registry import split_model_name_tag

    name = get_deprecated_models().get(name, name)
    arch = split_model_name_tag(name)[0]
    if not timm.is_model(arch):
        raise LcpError(f"{name!r} is not a timm architecture")
    return arch


def clean_cfg(cfg: Any, **update: Any) -> dict:
    """A pretrained cfg as a dict without its weight location (lcp models take weights from their folder)."""
    if cfg is None:
        d: dict = {}
    elif dataclasses.is_dataclass(cfg):
        d = dataclasses.asdict(cfg)
    else:
        d = dict(cfg)
    for k in _WEIGHT_KEYS:
        d.pop(k, None)
    d.update(update)
    return d


# ---------------------------------------------------------------------------------------------- CNN-like rule

#: module class names that mix tokens (attention, MLP-mixing, recurrence, state space): not CNN-like
TOKEN_MIXERS = re.compile(
    r"Attention|Attn|MultiheadAttention|MHSA|GPSA|SHSA|SHMA|LiteMLA|HSMSSD|ParallelScalingBlock|ParallelThingsBlock"
    r"|LambdaLayer|MixerBlock|SpatialGatingBlock|GatedMlp|LSTM|GRU|RNN"
)
#: convolutional channel gates whose class names look like attention
CONV_GATES = frozenset({"SplitAttn", "SelectiveKernelAttn"})


def is_cnn_like(model: nn.Module) -> tuple[bool, str]:
    """CNN-like: at least one ``nn.Conv2d`` and no token-mixing module (see ``TOKEN_MIXERS``); and why not."""
    has_conv = False
    for m in model.modules():
        cls = type(m).__name__
        has_conv = has_conv or isinstance(m, nn.Conv2d)
        mixer = TOKEN_MIXERS.search(cls) and cls not in CONV_GATES
        if mixer or (cls == "ResBlock" and type(m).__module__.endswith("mlp_mixer")):  # ResMLP's block
            return False, f"token mixing ({cls})"
    return (True, "") if has_conv else (False, "no Conv2d")


def _classifier_names(model: nn.Module) -> list[str]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or []
    return [names] if isinstance(names, str) else list(names)


def _classifier(model: nn.Module) -> nn.Module | None:
    if hasattr(model, "get_classifier") and not isinstance(model, fx.GraphModule):
        try:
            return model.get_classifier()
        except Exception:
            return None
    mods = dict(model.named_modules())
    names = _classifier_names(model)
    return mods.get(names[0]) if names else None


def _in_width(m: nn.Module | None) -> int | None:
    if isinstance(m, nn.Linear):
        return m.in_features
    if isinstance(m, nn.Conv2d):
        return m.in_channels
    return None


def reset_classifier(model: nn.Module, num_classes: int, example: torch.Tensor) -> None:
    """A new classifier with ``num_classes`` outputs (timm's ``reset_classifier``, or the module replaced)."""
    if hasattr(model, "reset_classifier") and not isinstance(model, fx.GraphModule):
        model.reset_classifier(num_classes)
    else:
        mods = dict(model.named_modules())
        names = [n for n in _classifier_names(model) if n in mods]
        if not names:
            raise LcpError("cannot change num_classes of this pruned model: its classifier is unknown")
        for n in names:
            old = mods[n]
            if isinstance(old, nn.Linear):
                new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
            elif isinstance(old, nn.Conv2d) and old.kernel_size == (1, 1):
                new = nn.Conv2d(old.in_channels, num_classes, 1, bias=old.bias is not None)
            else:
                raise LcpError(f"cannot change num_classes: classifier {n} is a {type(old).__name__}")
            if num_classes == 0:
                new = nn.Identity()
            parent, _, leaf = n.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, new)
        model.num_classes = num_classes
    if num_classes:
        was = model.training
        with torch.no_grad():
            out = model.eval()(example)
        model.train(was)
        if out.shape[-1] != num_classes:
            raise LcpError(f"the new classifier gives {out.shape[-1]} outputs, not {num_classes}")


def refresh_attributes(pruned: nn.Module, original: nn.Module, example_inputs: Sequence[torch.Tensor]) -> None:
    """Make a pruned timm model describe itself: channel counts measured on it, timm attributes kept.

    ``num_features`` (width of ``forward_features``), ``head_hidden_size`` (the classifier's input width) and
    ``feature_info[i]["num_chs"]`` become the pruned widths; a GraphModule gets the original's timm
    attributes (``num_classes``, ``pretrained_cfg``, ``feature_info``, ...). Other models are left alone.
    """
    if not hasattr(original, "pretrained_cfg"):
        return
    if isinstance(pruned, fx.GraphModule):
        for a in _COPY_ATTRS:
            if hasattr(original, a) and not hasattr(pruned, a):
                setattr(pruned, a, copy.deepcopy(getattr(original, a)))
    infos = getattr(pruned, "feature_info", None)
    names = [fi.get("module") for fi in infos] if isinstance(infos, list) else []
    own = not isinstance(pruned, fx.GraphModule) and hasattr(pruned, "forward_features")

    pool = next((n for n, _ in original.named_modules() if n.endswith("global_pool")), None)

    def run(m: nn.Module, use_features: bool) -> tuple[Any, dict]:
        seen: dict[str, Any] = {}
        mods = dict(m.named_modules())
        hooks = [
            mods[n].register_forward_hook(lambda _m, _i, o, n=n: seen.setdefault(n, o))
            for n in names
            if isinstance(n, str) and n in mods
        ]
        if not use_features and pool in mods:  # a GraphModule: the pool's input is what forward_features returns
            hooks.append(mods[pool].register_forward_hook(lambda _m, i, _o: seen.setdefault(" pool", i[0])))
        was = m.training
        try:
            with torch.no_grad():
                m.eval()
                xs = [x.float() for x in example_inputs]
                out = m.forward_features(*xs) if use_features else m(*xs)
        except Exception:
            out = None
        finally:
            m.train(was)
            for h in hooks:
                h.remove()
        return out, seen

    out_o, seen_o = run(original, own)
    out_p, seen_p = run(pruned, own)

    def width(old: Any, new: Any, value: int) -> int | None:
        if torch.is_tensor(old) and torch.is_tensor(new) and old.dim() >= 2 and old.dim() == new.dim():
            if old.shape[1] == value:
                return int(new.shape[1])
            if old.shape[-1] == value:
                return int(new.shape[-1])
        return None

    head_o, head_p = _in_width(_classifier(original)), _in_width(_classifier(pruned))
    nf = getattr(original, "num_features", None)
    if isinstance(nf, int):
        if own:
            new = width(out_o, out_p, nf)
        elif " pool" in seen_o and " pool" in seen_p:
            new = width(seen_o[" pool"], seen_p[" pool"], nf)
        else:
            new = head_p if nf == head_o else None
        if new is not None:
            pruned.num_features = new
    hh = getattr(original, "head_hidden_size", None)
    if isinstance(hh, int):
        if hh == head_o and head_p is not None:
            pruned.head_hidden_size = head_p
        elif hh == nf and isinstance(getattr(pruned, "num_features", None), int):
            pruned.head_hidden_size = pruned.num_features
    for fi, n in zip(infos or [], names):
        if isinstance(fi, dict) and n in seen_o and n in seen_p:
            new = width(seen_o[n], seen_p[n], fi.get("num_chs", -1))
            if new is not None:
                fi["num_chs"] = new


# ------------------------------------------------------------------------------------------ feature extraction


class _OtherClass(Exception):
    """timm builds a different class for features_only (e.g. EfficientNetFeatures)."""


def _with_timm_wrapper(entry: Any, model: nn.Module, kwargs: dict) -> nn.Module:
    """Call timm's own entry with ``features_only=True``, its builder handing out ``model`` instead of a new one."""
    import timm.models._builder as builder

    real = builder.build_model_with_cfg

    def spy(model_cls: Any, variant: str, pretrained: bool, *args: Any, **kw: Any) -> nn.Module:
        if not (isinstance(model_cls, type) and isinstance(model, model_cls)):
            raise _OtherClass(getattr(model_cls, "__name__", str(model_cls)))
        kw.pop("pruned", None)  # timm's own *_pruned variants: the widths are lcp's already
        return real(lambda *_a, **_k: model, variant, False, *args, **kw)

    patched = [
        m
        for m in list(sys.modules.values())
        if getattr(m, "__name__", "").startswith("timm.") and getattr(m, "build_model_with_cfg", None) is real
    ]
    for m in patched:
        m.build_model_with_cfg = spy
    try:
        return entry(pretrained=False, features_only=True, **kwargs)
    finally:
        for m in patched:
            m.build_model_with_cfg = real


def features_model(
    model: nn.Module,
    original: nn.Module,
    arch: str | None,
    example: torch.Tensor,
    *,
    out_indices: Any = None,
    feature_cls: Any = None,
    kwargs: dict | None = None,
) -> nn.Module:
    """``features_only=True`` for a pruned timm model: timm's own feature wrapper around it, pruned channels."""
    import timm

    if isinstance(model, fx.GraphModule) or arch is None:
        raise LcpError(
            f"features_only is not available for this pruned {arch or 'model'}: lcp rewrote constants of "
            "its forward code (split sizes or channel slices), so it is a torch.fx GraphModule, not "
            "timm's class; use the classifier model (forward hooks on its modules give the features)"
        )
    entry = timm.models.model_entrypoint(arch)
    extra = {k: v for k, v in (("out_indices", out_indices), ("feature_cls", feature_cls)) if v is not None}
    tries = [extra]
    if feature_cls is None and hasattr(model, "forward_intermediates"):
        tries.append({**extra, "feature_cls": "getter"})  # e.g. EfficientNet: timm builds another class
    err: Exception | None = None
    for kw in tries:
        try:
            wrapped = _with_timm_wrapper(entry, model, {**(kwargs or {}), **kw})
            break
        except _OtherClass as e:
            err = e
    else:
        raise LcpError(
            f"features_only is not available for the pruned {arch}: timm builds a {err} for features "
            "and the pruned model has no forward_intermediates; pass feature_cls='getter' or use hooks"
        )
    _fix_feature_channels(wrapped, example)
    return wrapped.train()


def _fix_feature_channels(wrapped: nn.Module, example: torch.Tensor) -> None:
    """Set ``feature_info`` channel counts from one forward of the feature model (they must match its outputs)."""
    info = getattr(wrapped, "feature_info", None)
    if info is None or not hasattr(info, "out_indices"):
        return
    was = wrapped.training
    with torch.no_grad():
        outs = wrapped.eval()(example)
    wrapped.train(was)
    if isinstance(outs, dict):
        outs = list(outs.values())
    ch = -1 if "NHWC" in str(getattr(wrapped, "output_fmt", "NCHW")) else 1
    idx = list(info.out_indices) if isinstance(info.out_indices, (list, tuple)) else [info.out_indices]
    for i, t in zip(idx, outs):
        if torch.is_tensor(t) and t.dim() >= 2:
            info.info[i]["num_chs"] = int(t.shape[ch])


# ----------------------------------------------------------------------------------------------- config.json


def timm_config(spec: dict) -> dict | None:
    """timm's ``config.json`` for an lcp output folder of a timm model (None for other models)."""
    try:
        source, canonical = resolve_name(str(spec.get("model")))
        if source != "timm" or canonical.startswith("hf-hub:"):
            return None
        import timm

        arch = timm_arch(canonical)
        cfg = clean_cfg(timm.get_pretrained_cfg(canonical), num_classes=spec.get("num_classes"))
    except (LcpError, ImportError):
        return None
    return {
        "architecture": PREFIX + arch,
        "num_classes": spec.get("num_classes"),
        "pretrained_cfg": cfg,
        "lcp": {
            "model": spec.get("model"),
            "note": "pruned by lcp: rebuilt from channels.json by the timm "
            f"entry {PREFIX}{arch} (import lcp.models.timm_hub; lcp.models.timm_hub.register_all())",
        },
    }


def write_timm_config(out_dir: str | Path, spec: dict) -> None:
    """Write ``config.json`` (see ``timm_config``) into ``out_dir`` for timm models; nothing for others."""
    cfg = timm_config(spec)
    if cfg is not None:
        atomic_write_json(Path(out_dir) / CONFIG_NAME, cfg)


# --------------------------------------------------------------------------------------------------- runner

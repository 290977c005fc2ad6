"""Measured speed: latency of a model on this machine, and ``lcp bench`` tables.

Timings are medians over ``repeats`` runs after ``warmup`` runs, with ``torch.inference_mode``, on the
device that will run the model (``cpu`` or ``cuda``, synchronised). These machines are noisy: compare
ratios measured in one run, never timings across runs.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lcp.engine.modes import modes_kept
from lcp.errors import LcpError


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch CPU threads (unchanged when None)."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def _on(model: nn.Module, dev: torch.device) -> Iterator[nn.Module]:
    """``model`` in eval mode on ``dev`` for the block; a copy when it lives elsewhere (the caller's model is not
    moved), and every submodule's train/eval flag as it was afterwards."""
    p = next(model.parameters(), None)
    if p is not None and p.device != dev:
        model = copy.deepcopy(model).to(dev)
    with modes_kept(model):
        yield model.eval()


def model_input(model: nn.Module, batch: int, input_size: tuple[int, ...], dev: torch.device) -> torch.Tensor:
    """A random batch on ``dev`` in the model's floating dtype (float32 when it has no floating parameter)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.randn(batch, *input_size, device=dev, dtype=dtype)


def synchronizer(dev: torch.device) -> Callable[[], None]:
    """What waits for ``dev``'s queued work (CUDA and MPS run asynchronously: a clock alone times the queueing)."""
    return {"cuda": torch.cuda.synchronize, "mps": torch.mps.synchronize}.get(dev.type, lambda: None)


def measure(
    model: nn.Module,
    input_size: tuple[int, ...],
    *,
    batch: int = 1,
    device: str = "cpu",
    n_threads: int | None = None,
    warmup: int = 5,
    repeats: int = 20,
) -> dict[str, float]:
    """Latency of one forward pass at ``batch``: median, p10 and p90 in milliseconds, and images/s."""
    if device == "cuda" and not torch.cuda.is_available():
        raise LcpError("--device cuda asked for, but no CUDA device is available")
    dev = torch.device(device)
    x, sync = model_input(model, batch, input_size, dev), synchronizer(dev)
    times = []
    with _on(model, dev) as model, threads(n_threads), torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    times.sort()
    med = statistics.median(times)
    return {
        "median_ms": 1e3 * med,
        "p10_ms": 1e3 * times[len(times) // 10],
        "p90_ms": 1e3 * times[(9 * len(times)) // 10],
        "images_per_s": batch / med,
    }


DEFAULT_MIN_SECONDS = 1.0  # paired_latency's min_seconds when not given; $LCP_MIN_TIMING_SECONDS overrides it


def paired_latency(
    model: nn.Module,
    reference: nn.Module,
    input_size: tuple[int, ...],
    *,
    batch: int = 1,
    device: str = "cpu",
    n_threads: int | None = None,
    rounds: int = 5,
    repeats: int = 20,
    min_seconds: float | None = None,
) -> dict[str, float]:
    """Latency of ``model`` relative to ``reference``, timed in alternating rounds.

    A shared machine drifts (other load, clock changes) over the minutes between two timings; alternating
    ``rounds`` rounds of ``repeats`` timings of each makes the drift hit both; each network is timed for at least
    ``min_seconds`` in all (more timings than ``repeats`` when a pass is short). Returns the median of the
    per-round ratios (``ratio``), the per-round ratios (``rounds``) and, in milliseconds, each model's median
    over its rounds of the rounds' median, 10th and 90th percentile (``median_ms``, ``p10_ms``, ``p90_ms``; the
    reference's: ``reference_ms``, ``reference_p10_ms``, ``reference_p90_ms``). ``min_seconds`` defaults to
    ``$LCP_MIN_TIMING_SECONDS``, else ``DEFAULT_MIN_SECONDS``.
    """
    if min_seconds is None:
        min_seconds = float(os.environ.get("LCP_MIN_TIMING_SECONDS") or DEFAULT_MIN_SECONDS)
    per_round = max(3, -(-repeats // rounds))
    if min_seconds > 0:  # short passes (batch 1) jitter most: time them more often, at no great cost
        est = measure(reference, input_size, batch=batch, device=device, n_threads=n_threads, warmup=1, repeats=3)[
            "median_ms"
        ]
        per_round = max(per_round, math.ceil(min_seconds * 1e3 / max(est, 1e-3) / rounds))
    timed: dict[str, list[dict[str, float]]] = {"model": [], "reference": []}
    for _ in range(rounds):
        for key, m in (("reference", reference), ("model", model)):
            timed[key].append(
                measure(m, input_size, batch=batch, device=device, n_threads=n_threads, warmup=2, repeats=per_round)
            )

    def over_rounds(key: str, stat: str) -> float:
        return statistics.median(t.get(stat, t["median_ms"]) for t in timed[key])

    ratios = [a["median_ms"] / b["median_ms"] for a, b in zip(timed["model"], timed["reference"])]
    return {
        "ratio": statistics.median(ratios),
        "median_ms": over_rounds("model", "median_ms"),
        "p10_ms": over_rounds("model", "p10_ms"),
        "p90_ms": over_rounds("model", "p90_ms"),
        "reference_ms": over_rounds("reference", "median_ms"),
        "reference_p10_ms": over_rounds("reference", "p10_ms"),
        "reference_p90_ms": over_rounds("reference", "p90_ms"),
        "rounds": ratios,
    }


def median_error(values: Sequence[float]) -> float:
    """Relative standard error of the median of ``values`` (e.g. ``paired_latency``'s ``rounds``), from their
    median absolute deviation, so that one disturbed round does not inflate it."""
    med = statistics.median(values)
    sigma = 1.4826 * statistics.median([abs(v - med) for v in values])
    return 1.2533 * sigma / math.sqrt(len(values)) / med


def peak_memory_mb(model: nn.Module, input_size: tuple[int, ...], *, batch: int, device: str = "cpu") -> float:
    """Memory of one forward pass in MiB: the CUDA allocator's peak on a GPU; on CPU, parameters plus every
    leaf module's output (an upper bound of the peak, since eager frees activations as it goes)."""
    dev = torch.device(device)
    x = model_input(model, batch, input_size, dev)
    with _on(model, dev) as model, torch.inference_mode():
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            model(x)
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        total = [sum(p.numel() * p.element_size() for p in model.parameters()) + x.numel() * x.element_size()]

        def hook(m: nn.Module, inp: tuple, out: object) -> None:
            if isinstance(out, torch.Tensor):
                total[0] += out.numel() * out.element_size()

        handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
        try:
            model(x)
        finally:
            for h in handles:
                h.remove()
    return total[0] / 2**20


def bench(
    models: dict[str, nn.Module],
    input_size: tuple[int, ...],
    *,
    batches: tuple[int, ...] = (1, 64),
    device: str = "cpu",
    n_threads: int | None = None,
    repeats: int = 20,
    compile: bool = True,
    onnx: bool = True,
) -> pd.DataFrame:  # noqa: F821
    """One row per (model, runtime, batch): latency, throughput and peak memory; eager, torch.compile, ORT.

    With an ``"original"`` among ``models``, every other model is timed against it in alternating rounds
    (``paired_latency``, 5 rounds) and its rows get ``speedup`` (original's latency over its own, the median
    of the rounds' ratios) and ``speedup_error`` (that median's standard error): two networks timed one after
    the other on a shared machine can differ by the machine's drift alone."""
    import pandas as pd

    wanted = {"compile": compile, "onnxruntime": onnx and _has_onnxruntime()}
    rows: dict[tuple[str, str, int], dict] = {}
    runtimes: dict[str, dict[str, nn.Module]] = {}
    for name, model in models.items():
        runtimes[name] = {"eager": model}
        for runtime in [r for r, on in wanted.items() if on]:
            try:
                runtimes[name][runtime] = in_runtime(model, runtime, input_size, n_threads)
            except LcpError as e:  # no C++ toolchain, or the model does not compile / export: a row says why
                rows[(name, runtime, 0)] = {"model": name, "runtime": runtime, "error": str(e)}

    def row(name: str, runtime: str, b: int, ms: float, p10: float, p90: float, **extra: float) -> None:
        peak = peak_memory_mb(models[name], input_size, batch=b, device=device) if runtime == "eager" else None
        rows[(name, runtime, b)] = {
            "model": name,
            "runtime": runtime,
            "batch": b,
            "median_ms": ms,
            "p10_ms": p10,
            "p90_ms": p90,
            "images_per_s": b / (ms / 1e3),
            "peak_mb": peak,
            **extra,
        }

    reference = runtimes.get("original", {})
    for name, own in runtimes.items():
        for runtime, m in own.items():
            for b in batches:
                if name != "original" and runtime in reference:
                    t = paired_latency(
                        m, reference[runtime], input_size, batch=b, device=device, n_threads=n_threads, repeats=repeats
                    )
                    speedup = 1 / t["ratio"]
                    row(name, runtime, b, t["median_ms"], t["p10_ms"], t["p90_ms"], speedup=speedup,
                        speedup_error=speedup * median_error(t["rounds"]))  # fmt: skip
                    if ("original", runtime, b) not in rows:  # the original as timed in the first pairing
                        row("original", runtime, b, t["reference_ms"], t["reference_p10_ms"], t["reference_p90_ms"])
                elif name != "original":
                    t = measure(m, input_size, batch=b, device=device, n_threads=n_threads, repeats=repeats)
                    row(name, runtime, b, t["median_ms"], t["p10_ms"], t["p90_ms"])
    for runtime, m in reference.items():  # alone: no other model runs in this runtime (or there is none)
        for b in batches:
            if ("original", runtime, b) not in rows:
                t = measure(m, input_size, batch=b, device=device, n_threads=n_threads, repeats=repeats)
                row("original", runtime, b, t["median_ms"], t["p10_ms"], t["p90_ms"])
    order, at = {name: i for i, name in enumerate(models)}, {b: i for i, b in enumerate(batches)}

    def given_order(k: tuple[str, str, int]) -> tuple:  # models and batches as given, eager first
        return order[k[0]], k[1] != "eager", k[1], at.get(k[2], -1)

    return pd.DataFrame([rows[k] for k in sorted(rows, key=given_order)])


def onnx_session(model: nn.Module, input_size: tuple[int, ...], n_threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of ``model`` (exported with a dynamic batch, input ``x``), on ``n_threads``
    intra-op threads. Raises ``LcpError`` without onnxruntime (the ``export`` extra) or when the export fails."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise LcpError("ONNX Runtime timings need onnxruntime: pip install -e '.[export]'") from None
    import io

    buf = io.BytesIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates its passes
            torch.onnx.export(
                model.eval(),
                (torch.randn(2, *input_size),),
                buf,
                input_names=["x"],
                dynamic_shapes=({0: torch.export.Dim.AUTO},),
            )
    except Exception as e:  # the exporter raises many kinds; all mean "this model does not export"
        raise LcpError(f"{type(model).__name__} cannot be exported to ONNX: {type(e).__name__}") from None
    options = ort.SessionOptions()
    if n_threads:
        options.intra_op_num_threads, options.inter_op_num_threads = n_threads, 1
    return ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeModule(nn.Module):
    """An ONNX Runtime session called like a module (CPU tensors in and out), so that ``measure`` and
    ``paired_latency`` time it like an eager network."""

    def __init__(self, model: nn.Module, input_size: tuple[int, ...], n_threads: int | None = None):
        super().__init__()
        self.session = onnx_session(model, input_size, n_threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"x": x.cpu().numpy()})[0])


RUNTIMES = ("eager", "compile", "onnxruntime")


class FrozenCompiled(nn.Module):
    """``torch.compile(model, dynamic=False)`` for inference with Inductor's freezing, as PyTorch recommends for
    CPU inference: the weights become constants, BatchNorm is folded into the convs and their weights are
    prepacked. Kernels are specialized to each batch size (compiled on first use of it), as a fixed-batch
    deployment would compile them. Called under ``torch.inference_mode`` (a grad-mode call would recompile)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.compiled = torch.compile(model, dynamic=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        with torch.inference_mode(), inductor_config.patch(freezing=True):
            return self.compiled(x)


def compiled_module(model: nn.Module, input_size: tuple[int, ...]) -> nn.Module:
    """:class:`FrozenCompiled` of ``model``, compiled once on a batch of 1; raises what compilation raises."""
    compiled = FrozenCompiled(model)
    compiled(model_input(model, 1, input_size, next((p.device for p in model.parameters()), torch.device("cpu"))))
    return compiled


def in_runtime(model: nn.Module, runtime: str, input_size: tuple[int, ...], n_threads: int | None = None) -> nn.Module:
    """``model`` as ``runtime`` runs it: ``eager`` (itself), ``compile`` (:func:`compiled_module`) or
    ``onnxruntime`` (:class:`OnnxRuntimeModule`)."""
    if runtime == "eager":
        return model
    if runtime == "compile":
        try:
            return compiled_module(model, input_size)
        except Exception as e:  # compile needs a C++ toolchain and may not support the model
            raise LcpError(
                f"{type(model).__name__} cannot be compiled with torch.compile: {type(e).__name__}"
            ) from None
    if runtime == "onnxruntime":
        return OnnxRuntimeModule(model, input_size, n_threads)
    raise LcpError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")


def _has_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


# ------------------------------------------------------------------------------ per-layer lookup table
# NetAdapt-style: every prunable conv/linear is timed alone over a grid of input and output widths, and the
# latency of a pruned network is predicted as a constant plus the sum of its layers' interpolated timings.


def probe_layer(module: nn.Module, n_in: int, n_out: int, depthwise: bool) -> nn.Module:
    """A fresh layer like ``module`` with ``n_in`` inputs and ``n_out`` outputs."""
    if isinstance(module, nn.Linear):
        return nn.Linear(n_in, n_out, bias=module.bias is not None)
    groups = module.groups
    if depthwise:
        n_in = groups = n_out
    elif groups > 1:  # grouped: widths rounded up to a multiple of the groups
        n_in, n_out = -(-n_in // groups) * groups, -(-n_out // groups) * groups
    kwargs = dict(stride=module.stride, padding=module.padding, dilation=module.dilation, groups=groups)
    kwargs.update(bias=module.bias is not None, padding_mode=module.padding_mode)
    try:
        return type(module)(n_in, n_out, module.kernel_size, **kwargs)
    except TypeError:  # a subclass with a constructor of its own (timm's Conv2dSame, StdConv2d): its torch class
        base = next(c for c in type(module).__mro__ if c.__module__.startswith("torch.nn.modules"))
        return base(n_in, n_out, module.kernel_size, **kwargs)


def time_layer(
    module: nn.Module,
    n_in: int,
    n_out: int,
    depthwise: bool,
    shapes: list[tuple[int, ...]],
    *,
    batch: int,
    dev: torch.device,
    warmup: int,
    repeats: int,
) -> float:
    dtype = module.weight.dtype
    probe = probe_layer(module, n_in, n_out, depthwise).to(dev, dtype).eval()
    xs = [
        torch.randn(batch, *s[:-1], n_in if not depthwise else n_out, device=dev, dtype=dtype)
        if isinstance(module, nn.Linear)
        else torch.randn(batch, probe.in_channels, *s[1:], device=dev, dtype=dtype)
        for s in shapes
    ]
    sync = synchronizer(dev)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            for x in xs:
                probe(x)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)

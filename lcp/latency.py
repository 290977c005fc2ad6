"""Measured speed: latency of a model on this machine, and ``lcp bench`` tables.

Timings are medians over ``repeats`` runs after ``warmup`` runs, with ``torch.inference_mode``, on the
device that will run the model (``cpu`` or ``cuda``, synchronised). These machines are noisy: compare
ratios measured in one run, never timings across runs.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from .errors import LcpError


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch CPU threads (unchanged when None)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _on(model: nn.Module, dev: torch.device) -> nn.Module:
    """``model`` in eval mode on ``dev``; a copy when it lives elsewhere (the caller's model is not moved)."""
    p = next(model.parameters(), None)
    if p is not None and p.device != dev:
        import copy

        model = copy.deepcopy(model).to(dev)
    return model.eval()


def measure(model: nn.Module, input_size: tuple[int, ...], *, batch: int = 1, device: str = "cpu",
            n_threads: int | None = None, warmup: int = 5, repeats: int = 20) -> dict[str, float]:
    """Latency of one forward pass at ``batch``: median, p10 and p90 in milliseconds, and images/s."""
    if device == "cuda" and not torch.cuda.is_available():
        raise LcpError("--device cuda asked for, but no CUDA device is available")
    dev = torch.device(device)
    model = _on(model, dev)
    x = torch.randn(batch, *input_size, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    with threads(n_threads), torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    times.sort()
    med = statistics.median(times)
    return {"median_ms": 1e3 * med, "p10_ms": 1e3 * times[len(times) // 10],
            "p90_ms": 1e3 * times[(9 * len(times)) // 10], "images_per_s": batch / med}


def peak_memory_mb(model: nn.Module, input_size: tuple[int, ...], *, batch: int, device: str = "cpu") -> float:
    """Memory of one forward pass in MiB: the CUDA allocator's peak on a GPU; on CPU, parameters plus every
    leaf module's output (an upper bound of the peak, since eager frees activations as it goes)."""
    dev = torch.device(device)
    model = _on(model, dev)
    x = torch.randn(batch, *input_size, device=dev)
    with torch.inference_mode():
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


def bench(models: dict[str, nn.Module], input_size: tuple[int, ...], *, batches: tuple[int, ...] = (1, 64),
          device: str = "cpu", n_threads: int | None = None, repeats: int = 20, compile: bool = True,
          onnx: bool = True) -> "pd.DataFrame":  # noqa: F821
    """One row per (model, runtime, batch): latency, throughput and peak memory; eager, torch.compile, ORT."""
    import pandas as pd

    rows = []
    for name, model in models.items():
        runtimes: dict[str, nn.Module] = {"eager": model}
        if compile:
            try:
                compiled = torch.compile(model)
                with torch.inference_mode():
                    compiled(torch.randn(1, *input_size))
                runtimes["compile"] = compiled
            except Exception as e:  # compile needs a C++ toolchain and may not support the model
                rows.append({"model": name, "runtime": "compile", "error": f"{type(e).__name__}"})
        for runtime, m in runtimes.items():
            for b in batches:
                t = measure(m, input_size, batch=b, device=device, n_threads=n_threads, repeats=repeats)
                rows.append({"model": name, "runtime": runtime, "batch": b, **t,
                             "peak_mb": peak_memory_mb(model, input_size, batch=b, device=device)
                             if runtime == "eager" else None})
        if onnx:
            rows.extend(_onnx_rows(name, model, input_size, batches, repeats))
    return pd.DataFrame(rows)


def _onnx_rows(name: str, model: nn.Module, input_size: tuple[int, ...], batches: tuple[int, ...],
               repeats: int) -> list[dict]:
    """ONNX Runtime timings when onnxruntime is installed (nothing otherwise)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    import io

    import numpy as np

    buf = io.BytesIO()
    try:
        torch.onnx.export(model.eval(), torch.randn(1, *input_size), buf, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    except Exception as e:
        return [{"model": name, "runtime": "onnxruntime", "error": type(e).__name__}]
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    rows = []
    for b in batches:
        x = np.random.randn(b, *input_size).astype("float32")
        times = []
        for i in range(5 + repeats):
            t0 = time.perf_counter()
            sess.run(None, {"x": x})
            if i >= 5:
                times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        rows.append({"model": name, "runtime": "onnxruntime", "batch": b, "median_ms": 1e3 * med,
                     "images_per_s": b / med})
    return rows

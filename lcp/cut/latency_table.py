"""The per-layer latency table (NetAdapt-style): every prunable conv and linear timed alone on a grid of widths,
cached per device; it predicts the latency of any configuration for the latency budget's walk."""

from __future__ import annotations

from typing import Any

import torch

from lcp.cut import latency as timing
from lcp.engine.graph import ChannelGraph
from lcp.engine.modes import modes_kept
from lcp.errors import LcpError
from lcp.io import atomic_write_json, cache_dir, read_json

GRID_FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)


def _grid(full: int) -> list[int]:
    return sorted({max(1, round(f * full)) for f in GRID_FRACTIONS})


def _interp(grid: list[int], n: float) -> tuple[int, int, float]:
    """Bracketing grid indices of ``n`` and the weight of the upper one (clamped at the ends)."""
    import bisect

    if n <= grid[0]:
        return 0, 0, 0.0
    if n >= grid[-1]:
        return len(grid) - 1, len(grid) - 1, 0.0
    j = bisect.bisect_left(grid, n)
    return j - 1, j, (n - grid[j - 1]) / (grid[j] - grid[j - 1])


class LayerTable:
    """Timed milliseconds of one layer on a grid of (input width, output width); bilinear in between.

    Depthwise convs have one width (``in_grid`` is ``[0]``: their input width follows the output)."""

    def __init__(self, in_grid: list[int], out_grid: list[int], ms: list[list[float]]):
        self.in_grid, self.out_grid, self.ms = in_grid, out_grid, ms

    def __call__(self, n_in: float, n_out: float) -> float:
        if n_out <= 0 or (n_in <= 0 and self.in_grid != [0]):  # emptied with its residual branch: not run
            return 0.0
        i0, i1, wi = _interp(self.in_grid, n_in)
        o0, o1, wo = _interp(self.out_grid, n_out)
        m = self.ms
        low = (1 - wo) * m[i0][o0] + wo * m[i0][o1]
        high = (1 - wo) * m[i1][o0] + wo * m[i1][o1]
        return (1 - wi) * low + wi * high

    def to_json(self) -> dict:
        return {"in": self.in_grid, "out": self.out_grid, "ms": self.ms}

    @classmethod
    def from_json(cls, d: dict) -> LayerTable:
        return cls(list(d["in"]), list(d["out"]), [list(map(float, r)) for r in d["ms"]])


def input_shapes(graph: ChannelGraph, names: set[str]) -> dict[str, list[tuple[int, ...]]]:
    """Input shapes (without the batch) of every call of the named modules on the graph's example input."""
    shapes: dict[str, list[tuple[int, ...]]] = {n: [] for n in names}
    modules = dict(graph.model.named_modules())
    handles = [
        modules[n].register_forward_hook(lambda m, inp, out, n=n: shapes[n].append(tuple(inp[0].shape[1:])))
        for n in names
        if n in modules
    ]
    try:
        with modes_kept(graph.model), torch.inference_mode():
            graph.model.eval()(*graph.example_inputs)
    finally:
        for h in handles:
            h.remove()
    return shapes


def timed_input_size(graph: ChannelGraph) -> tuple[int, ...]:
    """The shape of one sample of the model's input, which latency timings feed; a model that takes anything but
    one tensor is refused in one line."""
    inputs = graph.example_inputs
    if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor):
        takes = f"{len(inputs)} inputs" if len(inputs) != 1 else f"a {type(inputs[0]).__name__}"
        raise LcpError(f"a latency budget times the model on one input tensor; this model takes {takes}: use a MACs "
                       "or params budget")  # fmt: skip
    return tuple(inputs[0].shape[1:])


def _table(entry: Any) -> LayerTable | None:
    """A cached entry as a table; None when it is missing or damaged (it is measured again)."""
    try:
        t = LayerTable.from_json(entry)
    except (KeyError, TypeError, ValueError):
        return None
    return t if len(t.ms) == len(t.in_grid) and all(len(r) == len(t.out_grid) for r in t.ms) else None


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; ``platform.processor()``, often empty there, elsewhere)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _device_key(device: str, batch: int, n_threads: int | None) -> str:
    import platform

    dev = torch.device(device)
    if dev.type == "cuda":  # cuda and cuda:N: that card's name and index
        name = f"{torch.cuda.get_device_name(dev)}-{dev.index or 0}"
    elif dev.type != "cpu":
        name = dev.type
    else:  # the CPU's model: two machines sharing $LCP_CACHE must not read each other's timings
        name = f"{platform.machine()}-{_cpu_model()}-t{n_threads or torch.get_num_threads()}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{name}-b{batch}-torch{torch.__version__}")


class LatencyTable:
    """Per-record latency lookup of a channel graph on one device, at one batch size (see :meth:`build`).

    ``tables[ri]`` is the :class:`LayerTable` of record ``ri`` (prunable convs and linears); ``base_ms`` is the
    whole original network's measured latency. What the tables do not explain (norms, activations, additions,
    call overhead) is ``const_ms`` plus ``overhead_ms[ri]``, a fixed time per layer that goes with it only when
    the layer goes (a residual branch removed by ``--depth``): :meth:`build` spreads it evenly over the timed
    layers, so the prediction at full width equals ``base_ms`` and a removed block takes its share with it.
    """

    def __init__(
        self,
        tables: dict[int, LayerTable],
        base_ms: float,
        const_ms: float,
        info: dict,
        overhead_ms: dict[int, float] | None = None,
    ):
        self.tables, self.base_ms, self.const_ms, self.info = tables, base_ms, const_ms, info
        self.overhead_ms = overhead_ms or {}

    def record_ms(self, ri: int, n_out: int, n_in: int) -> float:
        t = self.tables.get(ri)
        if t is None:
            return 0.0
        ms = t(n_in, n_out)
        alive = n_out > 0 and (n_in > 0 or t.in_grid == [0])
        return ms + self.overhead_ms.get(ri, 0.0) if alive else 0.0

    @classmethod
    def build(
        cls,
        graph: ChannelGraph,
        *,
        batch: int = 1,
        device: str = "cpu",
        n_threads: int | None = None,
        repeats: int = 10,
        warmup: int = 3,
        cache: bool = True,
        progress: bool = False,
    ) -> LatencyTable:
        """Time every prunable conv/linear of ``graph`` alone on a grid of widths (1/8 to 1 of each axis).

        Layers of the same shape are timed once; timings are cached per device, batch and thread count in
        the user cache (``$LCP_CACHE/latency/``), so a second model with the same layer shapes is free."""
        if device == "cuda" and not torch.cuda.is_available():
            raise LcpError("--device cuda asked for, but no CUDA device is available")
        size = timed_input_size(graph)
        dev = torch.device(device)
        recs = [
            (ri, r)
            for ri, r in enumerate(graph.records)
            if r.kind in ("conv", "linear") and r.out_ids is not None and r.in_ids is not None
        ]
        shapes = input_shapes(graph, {r.name for _, r in recs})
        modules = dict(graph.model.named_modules())
        path = cache_dir() / "latency" / f"{_device_key(device, batch, n_threads)}.json"
        stored: dict = {}
        if cache and path.is_file():
            try:
                stored = read_json(path, what="latency cache")
            except LcpError:
                stored = {}  # a damaged cache is rebuilt
        tables: dict[int, LayerTable] = {}
        fresh = 0
        with timing.threads(n_threads):
            todo = []
            for ri, r in recs:
                m = modules[r.name]
                dw = r.mode == "depthwise"
                key = f"{m!r}|{shapes[r.name]}|{len(r.in_ids)}x{len(r.out_ids)}|dw={dw}"
                key += "" if m.weight.dtype == torch.float32 else f"|{m.weight.dtype}"  # timed in the layer's dtype
                todo.append((ri, r, m, dw, key))
            from tqdm import tqdm

            for ri, r, m, dw, key in tqdm(todo, desc="latency table", disable=not progress, leave=False):
                if _table(stored.get(key)) is None:  # not measured yet, or a damaged entry
                    in_grid = [0] if dw else _grid(len(r.in_ids))
                    out_grid = _grid(len(r.out_ids))
                    ms = [
                        [
                            timing.time_layer(
                                m, n_in, n_out, dw, shapes[r.name], batch=batch, dev=dev, warmup=warmup, repeats=repeats
                            )
                            for n_out in out_grid
                        ]
                        for n_in in in_grid
                    ]
                    stored[key] = LayerTable(in_grid, out_grid, ms).to_json()
                    fresh += 1
                tables[ri] = LayerTable.from_json(stored[key])
            base_ms = timing.measure(graph.model, size, batch=batch, device=device, repeats=max(20, repeats))[
                "median_ms"
            ]
        if cache and fresh:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(path, stored)
            except OSError:
                pass  # the cache is an optimisation only
        full = sum(t(len(graph.records[ri].in_ids), len(graph.records[ri].out_ids)) for ri, t in tables.items())
        rest = base_ms - full  # per-layer work the layer timings miss: spread over the layers it goes with
        share = rest / len(tables) if tables and rest > 0 else 0.0
        return cls(
            tables,
            base_ms,
            rest - share * len(tables),
            {"device": device, "batch": batch, "layers": len(tables), "timed": fresh, "cache": str(path)},
            overhead_ms={ri: share for ri in tables},
        )

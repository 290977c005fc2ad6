"""Export a pruned model for deployment: ONNX, TorchScript or a ``torch.export`` ExportedProgram.

Every export is reloaded from the written file and compared with the model on random inputs (batch 2 and a
batch size the export did not see, where the format has a dynamic batch). The largest absolute difference is
reported, and an export that differs by more than ``atol`` is refused. ONNX needs the ``export`` extra
(``pip install -e ".[export]"``: onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lcp.engine.graph import root_cause
from lcp.engine.modes import modes_kept
from lcp.errors import LcpError
from lcp.io import PathLike, atomic_path, read_json
from lcp.models import store

FORMATS = {"onnx": ".onnx", "torchscript": ".ts.pt", "exported-program": ".pt2"}


@dataclass
class Exported:
    """Where the export went and how closely the reloaded file matches the model."""

    path: Path
    format: str
    max_abs_diff: float
    seconds: float


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the colours of the ONNX exporter's messages


def _first_line(e: BaseException) -> str:
    """The first line of the real reason: the root cause of ``e`` (past wrappers such as the ONNX exporter's
    "step 1/3 ... Next steps:"), without colour codes."""
    e = root_cause(e)
    text = _ANSI.sub("", str(e)).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[list[warnings.WarningMessage]]:
    """Swallow what the exporters print on stdout and stderr (their passes, graph dumps): lcp reports the
    result, or the reason in one line. Their warnings are recorded in the yielded list instead."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield caught


ONNX_MAX_BYTES = 3 * 2**29  # 1.5 GiB: a protobuf file holds at most 2 GiB, graph included


def _write(model: nn.Module, x: torch.Tensor, fmt: str, path: Path) -> None:
    batch = ({0: torch.export.Dim.AUTO},)
    if fmt == "onnx":
        size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        if size > ONNX_MAX_BYTES:
            raise LcpError(
                f"{type(model).__name__} holds {size / 2**30:.1f} GiB of weights: lcp writes ONNX as one "
                "self-contained file (at most 1.5 GiB); export it with torch.onnx.export(..., external_data=True)"
            )
        # one self-contained file: an external .data file would be named after the temporary path
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=batch,
            external_data=False,
        )
    elif fmt == "torchscript":
        torch.jit.save(torch.jit.trace(model, x), str(path))
    else:  # through an open file: torch warns of a path not ending in .pt2 (the temporary one, or the user's)
        program = torch.export.export(model, (x,), dynamic_shapes=batch)
        with open(path, "wb") as f:
            torch.export.save(program, f)


def _reloaded(fmt: str, path: Path):
    """A callable ``f(x) -> tensor`` that runs the exported file."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort  # the export extra; not a dependency of lcp itself
        except ImportError:
            raise LcpError("checking an ONNX export needs onnxruntime: pip install -e '.[export]'") from None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    if fmt == "torchscript":
        return torch.jit.load(str(path))
    with open(path, "rb") as f:
        return torch.export.load(f).module()


def export(
    model: nn.Module | PathLike,
    path: PathLike | None = None,
    *,
    format: str = "onnx",
    example_inputs: torch.Tensor | None = None,
    atol: float = 1e-4,
    seed: int = 0,
) -> Exported:
    """Export ``model`` (an ``nn.Module``, or the output folder of ``lcp prune`` / ``lcp.save``) to ``path`` in
    ``format`` (``onnx``, ``torchscript``, ``exported-program``), reload it and compare it with the model.

    A folder's model is rebuilt with ``lcp.load`` and its input size read from channels.json; the default path
    is ``DIR/model.onnx`` (``.ts.pt``, ``.pt2``). A model that cannot be exported, or whose export differs from
    it by more than ``atol``, raises ``LcpError`` (one line) and leaves no file. A module is exported in eval
    mode from the CPU and left as it was: every submodule's train/eval flag and its device."""
    if format not in FORMATS:
        raise LcpError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if isinstance(model, (str, Path)):
        folder = Path(model)
        net = store.load(folder)
        size = tuple(read_json(folder / "channels.json", what="channels.json")["input_size"])
        path = Path(path) if path is not None else folder / f"model{FORMATS[format]}"
    else:
        if example_inputs is None or path is None:
            raise LcpError("export of a module needs example_inputs (e.g. torch.zeros(1, 3, 32, 32)) and a path")
        if isinstance(example_inputs, (tuple, list)) and len(example_inputs) == 1:
            example_inputs = example_inputs[0]  # lcp.prune's form: a tuple of the forward's inputs
        if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() < 1:
            raise LcpError("lcp.export takes one input tensor as example_inputs (e.g. torch.zeros(1, 3, 32, 32))")
        net, size, path = model, tuple(example_inputs.shape[1:]), Path(path)
    if any(t.device.type != "cpu" for t in (*net.parameters(), *net.buffers())):
        net = copy.deepcopy(net).cpu()  # exported from the CPU; the caller's model stays where it is
    gen = torch.Generator().manual_seed(seed)
    x, x_other = torch.randn(2, *size, generator=gen), torch.randn(3, *size, generator=gen)
    t0 = time.perf_counter()
    with atomic_path(path) as tmp, modes_kept(net), torch.no_grad():
        net.eval()
        try:
            with _quiet() as caught:
                _write(net, x, format, tmp)
                run = _reloaded(format, tmp)
                checks = [x] if format == "torchscript" else [x, x_other]  # a traced script keeps batch 2 only
                diff = max(float((run(c).float() - net(c).float()).abs().max()) for c in checks)
        except LcpError:
            raise
        except Exception as e:  # the exporters raise many kinds; all mean "this model does not export"
            raise LcpError(f"{type(net).__name__} cannot be exported to {format}: {_first_line(e)}") from None
        for w in caught:  # a trace specialised to its input (a data-dependent branch): the check saw one input
            if issubclass(w.category, torch.jit.TracerWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if not diff <= atol:
            scale = float(net(x).float().abs().max())
            raise LcpError(
                f"the {format} export differs from the model by {diff:.3g} (more than {atol:g}, on outputs up to "
                f"{scale:.3g}); not written (a float32 export of large outputs can differ by about 1e-6 of them: "
                "pass a larger atol if that is acceptable)"
            )
    return Exported(path, format, diff, time.perf_counter() - t0)

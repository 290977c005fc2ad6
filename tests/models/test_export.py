"""``lcp export`` / ``lcp.export``: ONNX, TorchScript and ExportedProgram files that reload and match the pruned
model within 1e-4; a model that cannot be exported is one line and leaves no file."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import lcp
from tests.helpers import assert_one_line_error, lcp_cli

pytest.importorskip("onnxruntime")  # the export extra (installed with .[test])


@pytest.fixture(scope="module")
def zoo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = lcp.create_model("resnet20", num_classes=10)
    return lcp.save(lcp.prune(model, torch.zeros(1, 3, 32, 32), budget=0.5), tmp_path_factory.mktemp("zoo") / "r20")


@pytest.fixture(scope="module")
def timm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = lcp.create_model("resnet18", num_classes=10)  # timm, random weights
    res = lcp.prune(model, torch.zeros(1, 3, 64, 64), budget=0.5)
    return lcp.save(res, tmp_path_factory.mktemp("timm") / "r18", model_name="resnet18")


def _run_file(path: Path, fmt: str, x: torch.Tensor) -> np.ndarray:
    """The exported file run on its own (not through lcp)."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    if fmt == "torchscript":
        return torch.jit.load(str(path))(x).detach().numpy()
    return torch.export.load(str(path)).module()(x).detach().numpy()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "exported-program"])
@pytest.mark.parametrize("which", ["zoo_folder", "timm_folder"])
def test_export_round_trip(which: str, fmt: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    folder = request.getfixturevalue(which)
    out = tmp_path / f"model.{fmt}"
    res = lcp_cli("export", folder, "--format", fmt, "--out", out)
    assert res.code == 0, res.err
    reported = float(re.search(r"max abs difference (\S+)", res.out).group(1))
    assert reported <= 1e-4 and out.is_file()
    # one self-contained file that works elsewhere (the ONNX weights lay in a temporary file beside it before)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    (tmp_path / "deploy").mkdir()
    out = out.rename(tmp_path / "deploy" / out.name)
    model = lcp.load(folder)
    size = tuple(lcp.io.read_json(folder / "channels.json")["input_size"])
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(_run_file(out, fmt, x) - expected).max() <= 1e-4


def test_default_path_is_in_the_folder(zoo_folder: Path) -> None:
    res = lcp.export(zoo_folder, format="exported-program")
    assert res.path == zoo_folder / "model.pt2" and res.path.is_file() and res.max_abs_diff <= 1e-4


def test_a_module_exports_with_a_tuple_of_inputs(tmp_path: Path) -> None:
    model = lcp.create_model("resnet20").eval()
    res = lcp.export(model, tmp_path / "m.onnx", example_inputs=(torch.zeros(1, 3, 32, 32),))
    assert res.max_abs_diff <= 1e-4  # an AttributeError before: lcp.prune's form of the inputs


class NotExportable(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * float(y.detach().numpy().mean())  # leaves the graph: no exporter can follow it


def test_a_model_that_cannot_be_exported_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "bad.pt2"
    with pytest.raises(lcp.LcpError) as e:
        lcp.export(NotExportable(), out, format="exported-program", example_inputs=torch.zeros(1, 3, 8, 8))
    assert "NotExportable cannot be exported to exported-program" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists() and not list(tmp_path.iterdir())  # no file, no temporary left


class DataDependent(torch.nn.Module):
    """torch.export cannot follow a branch on a tensor's value (the exporters print graph dumps when it fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * 2 if y.sum() > 0 else y


@pytest.mark.parametrize("fmt", ["onnx", "exported-program"])
def test_an_export_failure_is_one_clean_line_with_the_real_reason(
    fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """Nothing of the exporters' narration (graph dumps, warnings) on stdout or stderr, no colour codes, and the
    root cause rather than the ONNX exporter's "step 1/3 ... Next steps:" wrapper."""
    monkeypatch.setattr(lcp.models.export.store, "load", lambda folder: DataDependent())
    (tmp_path / "channels.json").write_text('{"input_size": [3, 8, 8]}')
    res = lcp_cli("export", tmp_path, "--format", fmt)
    line = assert_one_line_error(
        res, f"DataDependent cannot be exported to {fmt}: ", "Could not guard on data-dependent expression"
    )
    assert "\x1b" not in line and "Next steps" not in line and res.out == ""
    assert capfd.readouterr() == ("", "")  # nothing printed around lcp's own streams either
    assert [p.name for p in tmp_path.iterdir()] == ["channels.json"]


def test_an_exported_program_may_be_written_to_any_suffix(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """torch warns of a .pt2 archive not named .pt2: lcp writes and reloads it through an open file, so no
    warning names its temporary file (or the user's)."""
    torch_log = logging.getLogger("torch")  # torch's loggers do not propagate to the root one
    torch_log.addHandler(caplog.handler)
    x = torch.zeros(1, 3, 8, 8)
    try:
        res = lcp.export(torch.nn.Conv2d(3, 4, 3), tmp_path / "m.bin", format="exported-program", example_inputs=x)
    finally:
        torch_log.removeHandler(caplog.handler)
    assert res.max_abs_diff <= 1e-4 and res.path.is_file()
    assert not [r for r in caplog.records if ".pt2" in r.getMessage()], caplog.text


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))],
)
def test_export_leaves_the_callers_model_as_it_was(device: str, tmp_path: Path) -> None:
    """A module is exported in eval mode from the CPU, and left with every submodule's flag and on its device (the
    device part is a check only in the cuda case, which runs where a GPU is)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5)).to(device)
    model.train()
    model[1].eval()
    res = lcp.export(model, tmp_path / "m.pt2", format="exported-program", example_inputs=torch.zeros(1, 3, 8, 8))
    assert res.max_abs_diff <= 1e-4
    assert [m.training for m in model.modules()] == [True, True, False, True]
    assert {t.device.type for t in model.state_dict().values()} == {device}


def test_export_errors_on_the_command_line(tmp_path: Path) -> None:
    assert_one_line_error(lcp_cli("export", tmp_path), "holds no pruned model")
    res = lcp_cli("export", tmp_path, "--format", "tflite")
    assert_one_line_error(res, "invalid choice")


def test_onnx_runtime_module_runs_like_the_model_and_is_timed_like_one(zoo_folder: Path) -> None:
    """``in_runtime(..., "onnxruntime")``: the exported network called like a module (any batch), which
    ``paired_latency`` times against another; an unknown runtime is one line."""
    from lcp.cut.latency import in_runtime, paired_latency

    net = lcp.load(zoo_folder).eval()
    ort_net = in_runtime(net, "onnxruntime", (3, 32, 32), n_threads=1)
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            assert torch.allclose(ort_net(x), net(x), atol=1e-4)
    t = paired_latency(ort_net, in_runtime(net, "eager", (3, 32, 32)), (3, 32, 32), rounds=2, repeats=4, min_seconds=0)
    assert t["ratio"] > 0 and len(t["rounds"]) == 2
    with pytest.raises(lcp.LcpError, match="unknown runtime 'tvm'"):
        in_runtime(net, "tvm", (3, 32, 32))


def test_compile_runtime_is_compiled_once_and_a_failure_is_one_line(monkeypatch) -> None:
    """``in_runtime(..., "compile")``: ``torch.compile`` with kernels specialized per batch size, called for
    inference with Inductor's freezing on, compiled on a batch of 1 before it is timed; a model that does not
    compile is an ``LcpError`` naming it, not a traceback.
    (``torch.compile`` itself is replaced here: a real compilation takes a minute on 2 cores.)"""
    import torch._inductor.config as inductor_config

    from lcp.cut.latency import in_runtime

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    calls = []

    def fake_compile(model, **kw):
        def run(x):
            calls.append((tuple(x.shape), inductor_config.freezing, torch.is_inference_mode_enabled()))
            return model(x)

        assert kw == {"dynamic": False}
        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    compiled = in_runtime(net, "compile", (3, 8, 8))
    assert calls == [((1, 3, 8, 8), True, True)]
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(compiled(x), net(x))
    assert not inductor_config.freezing  # only while the compiled module runs

    def broken(model, **kw):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(lcp.LcpError, match="Sequential cannot be compiled with torch.compile: RuntimeError"):
        in_runtime(net, "compile", (3, 8, 8))


def test_an_export_off_by_more_than_atol_is_refused_and_says_the_output_scale(
    zoo_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lcp.models.export as export

    reloaded = export._reloaded
    monkeypatch.setattr(export, "_reloaded", lambda fmt, path: lambda x, run=reloaded(fmt, path): run(x) + 1e-3)
    with pytest.raises(lcp.LcpError, match=r"differs from the model by 0\.001 \(more than 0\.0001, on outputs up to"):
        lcp.export(zoo_folder, tmp_path / "m.pt2", format="exported-program")
    assert not (tmp_path / "m.pt2").exists()
    assert lcp.export(zoo_folder, tmp_path / "m.pt2", format="exported-program", atol=2e-3).max_abs_diff < 2e-3


def test_a_trace_specialised_to_its_input_still_warns(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The exporters' output is swallowed; torch.jit's TracerWarning (a data-dependent branch, checked on one
    input only) is the one hint that a TorchScript file may be wrong on other inputs, and was swallowed too."""

    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y * 2 if bool(y.sum() > 0) else y

    import sys
    import warnings

    with warnings.catch_warnings():  # shown as Python shows it outside pytest: on stderr, when it is raised
        warnings.simplefilter("always")
        warnings.showwarning = lambda *w, **k: sys.stderr.write(warnings.formatwarning(*w[:4]))
        lcp.export(Branchy(), tmp_path / "b.ts.pt", format="torchscript", example_inputs=torch.zeros(1, 3, 8, 8))
    assert "TracerWarning" in capsys.readouterr().err

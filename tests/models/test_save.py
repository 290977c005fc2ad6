"""``lcp.save`` writes only folders that describe one model and that ``lcp.load`` can rebuild: ``overwrite=True``
removes the old model's other outputs (the user's files stay), and a ``model_name`` that builds another network
than the one pruned is refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision

import lcp
from lcp.models.store import widths

pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.zeros(1, 3, 32, 32)


def _prune(budget: float) -> lcp.PruneResult:
    torch.manual_seed(0)
    return lcp.prune(lcp.create_model("resnet20"), X, budget=budget)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit, for lcp.export
def test_overwrite_removes_the_old_models_outputs_and_keeps_the_users_files(tmp_path: Path) -> None:
    folder = lcp.save(_prune(0.7), tmp_path / "s")
    lcp.export(folder, format="torchscript")  # model.ts.pt, of the 0.7 model
    old = ["report.csv", "layers.csv", "widths.png", "bench.csv", "model.onnx", "model.onnx.data", "model.pt2"]
    for name in old:
        (folder / name).write_text("the 0.7 model's")
    mine = ["notes.txt", "train.py", "notes.csv", "my_plot.png", "teacher.safetensors", "train.log", "config.json"]
    for name in mine:  # some named like lcp's outputs: a folder save made has no run.json to say whose they are
        (folder / name).write_text("mine")
    (folder / "plots").mkdir()
    assert (folder / "model.ts.pt").is_file()

    r2 = _prune(0.3)
    lcp.save(r2, folder, overwrite=True)
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted(["channels.json", "model.safetensors", "plots", "transforms.json", *mine])
    assert all((folder / name).read_text() == "mine" for name in mine)
    assert widths(lcp.load(folder)) == widths(r2.model)

    r2.report = pd.DataFrame([{"model": "resnet20", "budget": 0.3}])  # what prune(data=) gives: rewritten, kept
    lcp.save(r2, folder, overwrite=True)
    assert "0.3" in (folder / "report.csv").read_text()


def test_overwrite_keeps_the_files_a_run_records_as_the_users(tmp_path: Path) -> None:
    folder = lcp.save(_prune(0.7), tmp_path / "s")
    (folder / "run.json").write_text(json.dumps({"format": 1, "signature": {}, "users_files": ["notes.csv"]}))
    (folder / "notes.csv").write_text("mine")
    (folder / "search.csv").write_text("the run's")
    lcp.save(_prune(0.3), folder, overwrite=True)
    assert (folder / "notes.csv").read_text() == "mine"
    assert not (folder / "search.csv").exists() and not (folder / "run.json").exists()


def test_without_overwrite_a_saved_model_is_refused_and_kept(tmp_path: Path) -> None:
    folder = lcp.save(_prune(0.7), tmp_path / "s")
    (folder / "report.csv").write_text("the 0.7 model's")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(lcp.LcpError, match="already holds a pruned model"):
        lcp.save(_prune(0.3), folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.fixture(scope="module")
def tv_resnet18() -> lcp.PruneResult:
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return lcp.prune(torchvision.models.resnet18(num_classes=10), X, budget=0.5)
    finally:
        torch.set_num_threads(n)


@pytest.mark.parametrize(
    "name, error",
    [
        ("nonexistent_net", "model_name 'nonexistent_net' is not a model lcp can build: unknown model"),
        ("tv:resnet34", r"model_name 'tv:resnet34' builds a network with other layers than the one pruned \(layer1\.2"),
    ],
)
def test_a_model_name_that_does_not_rebuild_the_original_is_refused_before_writing(
    tv_resnet18: lcp.PruneResult, name: str, error: str, tmp_path: Path
) -> None:
    with pytest.raises(lcp.LcpError, match=error):
        lcp.save(tv_resnet18, tmp_path / "new", model_name=name)
    assert not (tmp_path / "new").exists()

    folder = lcp.save(tv_resnet18, tmp_path / "old", model_name="tv:resnet18")  # the right name: it loads
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(lcp.LcpError, match=error):
        lcp.save(tv_resnet18, folder, model_name=name, overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing lost
    assert widths(lcp.load(folder)) == widths(tv_resnet18.model)


def test_other_constructor_arguments_than_the_names_defaults_are_refused(tmp_path: Path) -> None:
    import timm

    model = timm.create_model("resnet18", in_chans=1, num_classes=10)  # not through lcp: no arguments recorded
    result = lcp.prune(model, torch.zeros(1, 1, 32, 32), budget=0.5)
    with pytest.raises(lcp.LcpError, match=r"other layers than the one pruned \(conv1: \[64, 3, 1\] there"):
        lcp.save(result, tmp_path / "o", model_name="resnet18")
    assert not (tmp_path / "o").exists()

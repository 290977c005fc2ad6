"""Every file lcp reads is checked before any work: channels.json, transforms.json, model.safetensors; and
``lcp.save`` does not overwrite another run. One line (``LcpError``, exit 2 on the command line), nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lcp
from tests.helpers import assert_one_line_error, lcp_cli


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = lcp.create_model("resnet20", num_classes=10)
    return lcp.save(lcp.prune(model, torch.zeros(1, 3, 32, 32), budget=0.5), tmp_path / "out")


def _edit_spec(folder: Path, **changes) -> None:
    spec = json.loads((folder / "channels.json").read_text())
    spec.update(changes)
    (folder / "channels.json").write_text(json.dumps(spec))


def _refused(folder: Path, phrase: str) -> None:
    with pytest.raises(lcp.LcpError) as e:
        lcp.load(folder)
    assert phrase in str(e.value) and "\n" not in str(e.value)
    assert_one_line_error(lcp_cli("eval", folder), phrase)  # the command line says the same, exit 2


@pytest.mark.parametrize(
    "text, phrase",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"model": "resnet20", "num_classes": ' + "9" * 5001 + "}", "cannot be read"),
        (
            '{"model": "resnet20", "num_classes": NaN, "input_size": [3, 32, 32], "removed_units": []}',
            "num_classes must",
        ),
        ('["a list"]', "it must be a JSON object"),
    ],
)
def test_hostile_channels_json_text(saved: Path, text: str, phrase: str) -> None:
    (saved / "channels.json").write_text(text)
    _refused(saved, phrase)


@pytest.mark.parametrize(
    "changes, phrase",
    [
        ({"num_classes": -1}, "num_classes must be a whole number or null"),
        ({"num_classes": True}, "num_classes must be a whole number or null"),
        ({"model_kwargs": ["gelu"]}, "model_kwargs must be an object of create_model arguments"),
        ({"model_kwargs": {"num_classes": 3}}, "model_kwargs must be an object of create_model arguments"),
        ({"output_check": [1.0]}, "output_check must be two numbers"),
        ({"input_size": [3, -32, 32]}, "input_size must be three whole numbers"),
        ({"input_size": [3, 10**9, 10**9]}, "input_size must be three whole numbers"),
        ({"removed_units": "all"}, "removed_units must be a list of unit names"),
        ({"removed_connections": [["a"]]}, "removed_connections must be a list of [consumer, source] names"),
        ({"widths": {"conv1": [-1]}}, "widths must map module names to lists of whole numbers"),
        ({"model": 7}, "model must be a model name"),
        ({"data": 5}, "data must be the data set name or folder it was pruned on"),  # lcp eval: a TypeError before
    ],
)
def test_channels_json_of_the_wrong_type_or_range(saved: Path, changes: dict, phrase: str) -> None:
    _edit_spec(saved, **changes)
    _refused(saved, phrase)


def test_an_input_size_the_model_cannot_run_is_one_line(saved: Path, capfd: pytest.CaptureFixture) -> None:
    _edit_spec(saved, input_size=[5, 32, 32])  # the stem takes 3 channels
    with pytest.raises(lcp.LcpError, match="does not run on the example input"):
        lcp.load(saved)
    assert "Traceback" not in capfd.readouterr().err  # torch's own traceback is not printed either


def test_a_structure_that_empties_a_group_is_refused(saved: Path) -> None:
    graph = lcp.build_graph(lcp.create_model("resnet20", num_classes=10), torch.zeros(1, 3, 32, 32))
    group = graph.groups[0]
    _edit_spec(saved, removed_units=[graph.units[u].key for u in group.units], widths=None)
    spec = json.loads((saved / "channels.json").read_text())
    del spec["widths"]
    (saved / "channels.json").write_text(json.dumps(spec))
    _refused(saved, f"it removes every channel of {group.name}")


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-1", "0"])
def test_non_finite_or_non_positive_alpha_is_refused(
    value: str, tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path
) -> None:
    graph = lcp.build_graph(lcp.create_model("resnet20", num_classes=3), torch.zeros(1, 3, 32, 32))
    rows = [{"group": g.name, "alpha": 1.0, "kappa": 0.0} for g in graph.groups]
    text = json.dumps({"groups": rows}).replace('"alpha": 1.0', f'"alpha": {value}', 1)
    (tmp_path / "t.json").write_text(text)
    out = tmp_path / "run"
    res = lcp_cli(
        "prune",
        "--model",
        "resnet20",
        "--data",
        tiny_folder,
        "--checkpoint",
        resnet20_ckpt,
        "--transforms",
        tmp_path / "t.json",
        "--finetune-epochs",
        "0",
        "--holdout",
        "9",
        "--out",
        out,
        "--no-progress",
    )
    phrase = "a non-finite or non-positive alpha"
    assert_one_line_error(res, phrase)
    assert not (out / "report.csv").exists()


@pytest.mark.parametrize("kind", ["int64", "bool", "nan"])
def test_weights_of_the_wrong_kind_are_refused(saved: Path, kind: str) -> None:
    state = load_file(saved / "model.safetensors")
    key = next(k for k, v in state.items() if v.is_floating_point())
    if kind == "nan":
        state[key] = state[key].clone().fill_(float("nan"))
    else:
        state[key] = state[key].to(getattr(torch, kind))
    save_file(state, saved / "model.safetensors")
    _refused(saved, "NaN or infinite values" if kind == "nan" else f"as torch.{kind}, not floating point")


def test_save_does_not_overwrite_another_run(saved: Path) -> None:
    before = (saved / "channels.json").read_bytes()
    model = lcp.create_model("resnet20", num_classes=10)
    other = lcp.prune(model, torch.zeros(1, 3, 32, 32), budget=0.3)
    with pytest.raises(lcp.LcpError, match="already holds a pruned model or a run"):
        lcp.save(other, saved)
    assert (saved / "channels.json").read_bytes() == before
    lcp.save(other, saved, overwrite=True)
    assert lcp.count_macs(lcp.load(saved), torch.zeros(1, 3, 32, 32)) == other.plan.macs

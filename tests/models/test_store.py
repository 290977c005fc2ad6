"""``lcp.save`` / ``lcp.load`` rebuild exactly the network that was saved: the create_model arguments are kept,
models whose state needs torch's metadata or whose output is not a class vector round-trip, and a rebuild that
computes something else is refused (one line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lcp

pytestmark = pytest.mark.usefixtures("one_thread")


def _round_trip(model: torch.nn.Module, x: torch.Tensor, folder: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    pruned = lcp.prune(model, x).model.eval()
    return pruned, lcp.load(lcp.save(lcp.prune(model, x), folder))


def _outputs(out) -> list[torch.Tensor]:
    return list(out.values()) if isinstance(out, dict) else [out]


@pytest.mark.parametrize(
    "name, kwargs, size",
    [
        ("resnet18", {"num_classes": 10, "act_layer": "gelu"}, 64),  # rebuilt with ReLU before, silently
        ("resnet18", {"num_classes": 0}, 64),  # headless: saved 512 classes, refused on load
        ("tv:mnasnet0_5", {"num_classes": 10}, 64),  # its state needs torch's version metadata
        ("tv:lraspp_mobilenet_v3_large", {"num_classes": 3}, 64),  # a dict of maps, not (N, classes)
    ],
)
def test_save_and_load_rebuild_the_same_network(name: str, kwargs: dict, size: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    pruned, loaded = _round_trip(lcp.create_model(name, **kwargs), x, tmp_path / "out")
    with torch.no_grad():
        for a, b in zip(_outputs(pruned(x)), _outputs(loaded(x))):
            assert torch.equal(a, b)


def test_model_name_given_again_keeps_the_arguments_the_model_was_created_with(tmp_path: Path) -> None:
    x = torch.randn(1, 1, 64, 64)
    model = lcp.create_model("resnet18", num_classes=10, in_chans=1)
    folder = lcp.save(lcp.prune(model, x), tmp_path / "o", model_name="resnet18")  # the same name: same builder
    assert json.loads((folder / "channels.json").read_text())["model_kwargs"] == {"in_chans": 1}
    assert lcp.load(folder)(x).shape == (1, 10)


def test_a_rebuild_that_computes_something_else_is_refused(tmp_path: Path) -> None:
    x = torch.randn(1, 3, 64, 64)
    folder = lcp.save(lcp.prune(lcp.create_model("resnet18", num_classes=10, act_layer="gelu"), x), tmp_path / "o")
    spec = json.loads((folder / "channels.json").read_text())
    assert spec["model_kwargs"] == {"act_layer": "gelu"}
    del spec["model_kwargs"]  # same widths and weights, ReLU instead of GELU
    (folder / "channels.json").write_text(json.dumps(spec))
    with pytest.raises(lcp.LcpError, match="does not compute what was saved"):
        lcp.load(folder)


def test_arguments_that_cannot_be_recorded_or_built_are_one_line(tmp_path: Path) -> None:
    x = torch.zeros(1, 3, 32, 32)
    model = lcp.create_model("resnet20")
    model.lcp_kwargs = {"norm": torch.nn.BatchNorm2d}  # not JSON: lcp.load could not rebuild it
    with pytest.raises(lcp.LcpError, match="not all JSON values"):
        lcp.save(lcp.prune(model, x), tmp_path / "a")
    with pytest.raises(lcp.LcpError, match="cannot create resnet20 with foo"):
        lcp.create_model("resnet20", foo=1)
    with pytest.raises(lcp.LcpError, match="num_classes must be a whole number"):
        lcp.create_model("resnet20", num_classes="10")
    (tmp_path / "file").write_text("x")
    with pytest.raises(lcp.LcpError, match="is a file; save the model elsewhere"):
        lcp.save(lcp.prune(lcp.create_model("resnet20"), x), tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"

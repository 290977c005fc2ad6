"""Files that would run code when unpickled: lcp never executes them (it reads JSON and safetensors only).

Where lcp reads a file as safetensors or JSON (model.safetensors, channels.json, transforms.json), the marker
check guards against a future fallback to unpickling; the checkpoint cases (here and ``evil-pickle-*`` in
tests/run/test_cli.py) are where ``torch.load(weights_only=True)`` itself is exercised."""

from pathlib import Path

import pytest
import torch

import lcp
from tests.helpers import assert_one_line_error, evil_pickle, lcp_cli


def _evil_file(path: Path, marker: Path) -> Path:
    return evil_pickle(path, marker, "plain")


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    model = lcp.create_model("resnet20", num_classes=10)
    result = lcp.prune(model, torch.zeros(1, 3, 32, 32), budget=0.5)
    return lcp.save(result, tmp_path / "out")


def test_pickle_as_weights_in_output_folder(saved: Path, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    _evil_file(saved / "model.safetensors", marker)
    with pytest.raises(lcp.LcpError, match="model.safetensors is corrupt or truncated"):
        lcp.load(saved)
    assert not marker.exists()


def test_pickle_as_channels_json(saved: Path, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    _evil_file(saved / "channels.json", marker)
    with pytest.raises(lcp.LcpError, match="cannot read channels.json .*: not UTF-8 text"):
        lcp.load(saved)
    assert not marker.exists()


def test_pickle_as_transforms(tmp_path: Path, tiny_folder: Path, resnet20_ckpt: Path) -> None:
    marker = tmp_path / "MARKER"
    bad = _evil_file(tmp_path / "transforms.json", marker)
    res = lcp_cli(
        "prune",
        "--model",
        "resnet20",
        "--data",
        tiny_folder,
        "--checkpoint",
        resnet20_ckpt,
        "--method",
        "lcp",
        "--transforms",
        bad,
        "--finetune-epochs",
        "0",
        "--holdout",
        "9",
        "--no-progress",
        "--out",
        tmp_path / "out",
    )
    line = assert_one_line_error(res, "cannot read transforms file", "not UTF-8 text")
    assert "transforms" in line
    assert not marker.exists()


def test_pickle_as_checkpoint_for_check(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    bad = _evil_file(tmp_path / "ckpt.pt", marker)
    line = assert_one_line_error(
        lcp_cli("check", "--model", "resnet20", "--checkpoint", bad), "is not a readable PyTorch checkpoint"
    )
    assert line.startswith("lcp: error:")
    assert not marker.exists()

"""Files that would run code when unpickled: lcp never executes them (it reads JSON and safetensors only)."""
import os
import pickle
from pathlib import Path

import pytest
import torch

import lcp
from lcp.cli import main


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_file(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(_Evil(marker)))
    return path


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    model = lcp.create_model("resnet20", num_classes=10)
    result = lcp.prune(model, torch.zeros(1, 3, 32, 32), budget=0.5)
    return lcp.save(result, tmp_path / "out")


def test_pickle_as_weights_in_output_folder(saved: Path, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    _evil_file(saved / "model.safetensors", marker)
    with pytest.raises(lcp.LcpError):
        lcp.load(saved)
    assert not marker.exists()


def test_pickle_as_channels_json(saved: Path, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    _evil_file(saved / "channels.json", marker)
    with pytest.raises(lcp.LcpError):
        lcp.load(saved)
    assert not marker.exists()


def test_pickle_as_transforms(tmp_path: Path, tiny_folder: Path, resnet20_ckpt: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "MARKER"
    bad = _evil_file(tmp_path / "transforms.json", marker)
    code = main(["prune", "--model", "resnet20", "--data", str(tiny_folder), "--checkpoint", str(resnet20_ckpt),
                 "--method", "lcp", "--transforms", str(bad), "--finetune-epochs", "0", "--holdout", "9",
                 "--no-progress", "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "transforms" in err[0]
    assert not marker.exists()


def test_pickle_as_checkpoint_for_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "MARKER"
    bad = _evil_file(tmp_path / "ckpt.pt", marker)
    assert main(["check", "--model", "resnet20", "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lcp: error:")
    assert not marker.exists()

"""Tests for lcp.models.zoo and lcp.models.factory: zoo architectures, model creation by name, checkpoint loading
errors."""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.fx
from torch import nn

from lcp.errors import LcpError
from lcp.io import cache_dir
from lcp.models.factory import create_model, default_checkpoint, load_checkpoint, model_info
from lcp.models.zoo import ZOO, ShortcutA
from tests.helpers import REPO, evil_pickle


def weights_dir() -> Path:
    """$LCP_WEIGHTS, else ../shared/weights beside the checkout."""
    env = os.environ.get("LCP_WEIGHTS")
    return Path(env) if env else REPO.parent / "shared" / "weights"


def shared_weight(name: str) -> Path:
    path = weights_dir() / f"{name}_cifar10.pt"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return path


def conv_linear_macs(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one image."""
    total = 0

    def hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out[0].numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(torch.zeros(input_size))
    for h in handles:
        h.remove()
    return total


class ShortcutLeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, ShortcutA) or super().is_leaf_module(m, qualname)


# ------------------------------------------------------------------------------------------------------- zoo


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_forward_and_trace(name: str) -> None:
    model = ZOO[name](num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, 7)
        traced = torch.fx.symbolic_trace(model)
        torch.testing.assert_close(traced(x), y)
        graph = ShortcutLeafTracer().trace(model)
        torch.testing.assert_close(torch.fx.GraphModule(model, graph)(x), y)


@pytest.mark.parametrize(
    "name, params, macs",
    [
        ("resnet20", 269_722, 40_551_040),  # README of ../shared/weights: 0.27M, 40.55M MACs
        ("resnet56", 853_018, 125_485_696),  # 0.85M, 125.49M MACs
        ("mobilenetv2", 2_236_682, 24_461_312),  # 2.24M, 24.46M MACs
        ("densenet40", 1_019_722, 264_812_928),  # DenseNet paper: 1.0M params; 264.8M conv+FC MACs
    ],
)
def test_zoo_size(name: str, params: int, macs: int) -> None:
    model = ZOO[name]()
    assert sum(p.numel() for p in model.parameters()) == params
    assert conv_linear_macs(model) == macs


def test_resnet_structure() -> None:
    model = ZOO["resnet20"]()
    shortcut = model.layer2[0].shortcut
    assert isinstance(shortcut, ShortcutA) and (shortcut.pad_left, shortcut.pad_right, shortcut.stride) == (8, 8, 2)
    assert isinstance(model.layer2[1].shortcut, nn.Identity)
    assert model.linear.in_features == 64 and model.layer3[0].conv1.stride == (2, 2)
    # forward reads the pads from the attributes, so the pruning engine can change them
    shortcut.pad_left, shortcut.pad_right = 4, 12
    assert shortcut(torch.randn(1, 16, 16, 16)).shape == (1, 32, 8, 8)


def test_zoo_entry_metadata() -> None:
    info = model_info("resnet56")
    assert (info.source, info.input_size, info.default_dataset) == ("zoo", (3, 32, 32), "cifar10")
    assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)
    assert model_info("ResNet56").name == "resnet56"


# ---------------------------------------------------------------------------------------- shared checkpoints


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_shared_checkpoint_loads_strictly(name: str) -> None:
    path = shared_weight(name)
    model = create_model(name, checkpoint=str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.state_dict(), dict(state))


def test_default_checkpoint_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LCP_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("LCP_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    assert default_checkpoint("resnet20", "cifar10") is None
    with pytest.raises(LcpError, match="no pretrained cifar10 weights for resnet20"):
        create_model("resnet20", pretrained=True)

    cached = tmp_path / "cache" / "weights" / "resnet20_cifar10.pt"
    cached.parent.mkdir(parents=True)
    torch.save(ZOO["resnet20"]().state_dict(), cached)
    assert default_checkpoint("resnet20", "cifar10") == cached
    local = tmp_path / "weights" / "resnet20_cifar10.pt"
    local.parent.mkdir()
    torch.save(ZOO["resnet20"]().state_dict(), local)
    assert default_checkpoint("resnet20", "cifar10") == local  # $LCP_WEIGHTS first
    torch.testing.assert_close(create_model("resnet20", pretrained=True).state_dict(), torch.load(local))


def test_cache_dir_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LCP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "lcp"


# ------------------------------------------------------------------------------------------ checkpoint errors


def test_wrapped_and_prefixed_checkpoints(tmp_path: Path) -> None:
    state = ZOO["resnet20"]().state_dict()
    path = tmp_path / "wrapped.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    torch.testing.assert_close(load_checkpoint(ZOO["resnet20"](), path).state_dict(), state)

    from safetensors.torch import save_file

    save_file(state, tmp_path / "model.safetensors")
    torch.testing.assert_close(load_checkpoint(ZOO["resnet20"](), tmp_path / "model.safetensors").state_dict(), state)


def test_architecture_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "resnet20.pt"
    torch.save(ZOO["resnet20"]().state_dict(), path)
    with pytest.raises(LcpError) as err:
        create_model("resnet56", checkpoint=str(path))
    message = str(err.value)
    assert message.startswith("checkpoint does not fit resnet56: 216 missing keys (layer1.3.conv1.weight,")
    assert "\n" not in message

    with pytest.raises(LcpError, match=r"first shape mismatch linear.weight \[10, 64\] vs \[100, 64\]"):
        create_model("resnet20", num_classes=100, checkpoint=str(path))


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "does not exist"),
        (b"", "is not a readable PyTorch checkpoint"),
        (b"this is a text file, not weights\n", "is not a readable PyTorch checkpoint"),
        ("truncated", "is not a readable PyTorch checkpoint"),
    ],
)
def test_unreadable_checkpoint(tmp_path: Path, content: bytes | str | None, expected: str) -> None:
    path = tmp_path / "model.pt"
    if content == "truncated":
        torch.save(ZOO["resnet20"]().state_dict(), path)
        path.write_bytes(path.read_bytes()[:5000])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(LcpError, match=expected):
        load_checkpoint(ZOO["resnet20"](), path)


def test_corrupt_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_text("not a safetensors file")
    with pytest.raises(LcpError, match="is not a readable safetensors file"):
        load_checkpoint(ZOO["resnet20"](), path)


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    marker, path = tmp_path / "MARKER", tmp_path / "evil.pt"
    evil_pickle(path, marker, "zip", payload=lambda e: {"state_dict": e})
    with pytest.raises(LcpError, match="refused for safety"):
        load_checkpoint(ZOO["resnet20"](), path)
    assert not marker.exists()


def test_non_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(LcpError, match="holds no state dict"):
        load_checkpoint(ZOO["resnet20"](), path)


def test_checkpoint_with_other_keys_or_damaged_weights_is_refused(tmp_path: Path) -> None:
    """Integer keys raised an AttributeError; NaN weights were blamed on lcp ("please report this model") by the
    verification later; int64 weights were loaded, converted silently."""
    path = tmp_path / "intkey.pt"
    torch.save({1: torch.zeros(1)}, path)
    with pytest.raises(LcpError, match="holds no state dict"):
        load_checkpoint(ZOO["resnet20"](), path)
    state = ZOO["resnet20"]().state_dict()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, path)
    with pytest.raises(LcpError, match=r"checkpoint .*intkey.pt holds NaN or infinite values in conv1.weight"):
        create_model("resnet20", checkpoint=path)
    torch.save({k: v.long() for k, v in ZOO["resnet20"]().state_dict().items()}, path)
    with pytest.raises(LcpError, match=r"holds conv1.weight as torch.int64, not floating point"):
        load_checkpoint(ZOO["resnet20"](), path)


# ------------------------------------------------------------------------------------------ names and sources


def test_unknown_name_suggests() -> None:
    with pytest.raises(LcpError, match=r"unknown model 'resnet5': did you mean resnet56, resnet50"):
        create_model("resnet5")
    with pytest.raises(LcpError, match="did you mean tv:resnet18"):
        model_info("tv:resnt18")
    with pytest.raises(LcpError, match="did you mean resnet18.a1_in1k"):
        create_model("resnet18.a1_in1x")


@pytest.mark.parametrize("name, source", [("resnet18", "timm"), ("tv:resnet18", "torchvision")])
def test_timm_and_torchvision(name: str, source: str) -> None:
    model = create_model(name, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    info = model_info(name)
    assert (info.source, info.input_size, info.default_dataset) == (source, (3, 224, 224), None)
    assert info.mean == (0.485, 0.456, 0.406)


def test_timm_alias_resolves_to_canonical_name() -> None:
    info = model_info("convnext_tiny_in22ft1k")  # deprecated timm alias
    assert info.name == "convnext_tiny.fb_in22k_ft_in1k" and info.source == "timm"


def test_offline_pretrained_download_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.models._api

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(LcpError, match=r"could not download pretrained weights for tv:resnet18 \(offline\?\)"):
        create_model("tv:resnet18", pretrained=True)


def test_an_unresolvable_hub_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, the hub's five retries took about 50 s and printed their warnings before the one line."""
    import socket

    import timm

    def no_dns(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(-2, "Name or service not known")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the download was attempted")

    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(timm, "create_model", never)
    with pytest.raises(LcpError, match=r"could not download pretrained weights for resnet18 \(offline\?\)"):
        create_model("resnet18", pretrained=True)


def test_offline_timm_hub_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(LcpError, match=r"could not download pretrained weights for resnet18 \(offline\?\)"):
        create_model("resnet18", pretrained=True, num_classes=10)
    with pytest.raises(LcpError, match=r"could not download the config of hf-hub:timm/resnet18.a1_in1k"):
        model_info("hf-hub:timm/resnet18.a1_in1k")


def test_a_safetensors_checkpoint_of_a_model_that_checks_its_state_version_loads(tmp_path) -> None:
    """torchvision's MNASNet refuses a state without its module versions, which safetensors files do not keep:
    the checkpoint loads with the model's own (it was a ValueError traceback)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = create_model("tv:mnasnet0_5", num_classes=10)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    again = create_model("tv:mnasnet0_5", num_classes=10, checkpoint=path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))

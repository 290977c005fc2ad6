"""Shared fixtures: a tiny ImageFolder, a 3-class ResNet-20 checkpoint, an isolated lcp cache, and CIFAR-10.

Helpers that test modules share (builders, the prune contract, CLI runners) are in ``tests/helpers.py``.


* Every test session (each pytest-xdist worker) gets its own empty ``$LCP_CACHE`` (autouse), so no test writes
  the user's ``~/.cache`` (and ``$LCP_PLUGINS`` unset); under xdist each worker runs one torch thread.
  ``$LCP_DATA`` and ``$LCP_WEIGHTS`` are left as the environment has them. Report timings are short (autouse).
* ``one_thread`` (one torch thread) and ``hub_offline``: for modules with ``pytest.mark.usefixtures``.
* ``tiny_folder``: ``train/`` and ``test/`` with 3 classes of 32x32 RGB images (PNG and JPEG) whose dominant
  colour is the class, so a model learns something within one epoch.
* ``resnet20_ckpt``: ``torch.save`` of a seeded ``create_model("resnet20", num_classes=3)`` state dict.
* ``cifar_env``: ``$LCP_DATA`` and ``$LCP_WEIGHTS`` for the real CIFAR-10 and checkpoints (reused from the
  environment, or unpacked from ``../shared``), or a clean skip without them.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_CLASSES, make_image_folder, save_state_dict


def shared_dir() -> Path | None:
    """The project's ``../shared`` (data and checkpoints beside the checkout), or None where it is absent."""
    path = Path(__file__).resolve().parents[2] / "shared"
    return path if path.is_dir() else None


@pytest.fixture(autouse=True, scope="session")
def _isolated_lcp_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point ``$LCP_CACHE`` at a fresh folder for the whole session (decoded data, baseline accuracies), and
    unset ``$LCP_PLUGINS``."""
    cache = tmp_path_factory.mktemp("lcp-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LCP_CACHE", str(cache))
        mp.delenv("LCP_PLUGINS", raising=False)  # a developer's own plugins stay out of the tests
        yield cache


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_worker():
    """Under pytest-xdist (the README's ``-n auto``) the workers share the cores: one torch thread each, as two
    threads per process on a busy 2-core machine make small models several times slower."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(n)
    else:
        yield


@pytest.fixture(autouse=True, scope="session")
def _short_report_timings():
    """Every prune run's report times the pruned network against the original for at least
    ``lcp.cut.latency.DEFAULT_MIN_SECONDS`` (1 s, for users); the tests assert no timings, so 0.1 s keeps the
    suite short. Set through ``$LCP_MIN_TIMING_SECONDS``, so child ``lcp`` processes get it too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LCP_MIN_TIMING_SECONDS", "0.1")
        yield


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes, 24 train and 9 test images per class, 32x32 RGB (read-only: copy it before changing it)."""
    return make_image_folder(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def state_dict_saver():
    """``save_state_dict(name, num_classes, path, seed=0)`` for tests that need other checkpoints."""
    return save_state_dict


@pytest.fixture(scope="session")
def resnet20_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain (weights_only-loadable) state dict of a seeded 3-class ResNet-20."""
    path = save_state_dict("resnet20", TINY_CLASSES, tmp_path_factory.mktemp("ckpt") / "resnet20_tiny.pt")
    torch.load(path, map_location="cpu", weights_only=True)  # must load without unpickling any object
    return path


# ------------------------------------------------------------------------------------------------- CIFAR-10


@dataclass(frozen=True)
class CifarEnv:
    data: Path  # holds cifar10/{train,test}
    weights: Path  # holds resnet56_cifar10.pt, ...


def _has_cifar(root: Path) -> bool:
    return (root / "cifar10" / "train").is_dir() and (root / "cifar10" / "test").is_dir()


@pytest.fixture(scope="session")
def _cifar_paths(tmp_path_factory: pytest.TempPathFactory) -> CifarEnv:
    """Find or unpack CIFAR-10 and the checkpoints once per session (changes no environment variable)."""
    shared = shared_dir()
    env_data = os.environ.get("LCP_DATA")
    if env_data and _has_cifar(Path(env_data).expanduser()):
        data = Path(env_data).expanduser()
    elif shared is not None and (shared / "data" / "unpack-cifar10.sh").is_file():
        data = tmp_path_factory.mktemp("cifar")
        done = subprocess.run(
            ["bash", str(shared / "data" / "unpack-cifar10.sh"), str(data)], capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0 or not _has_cifar(data):
            pytest.fail(f"unpack-cifar10.sh failed ({done.returncode}): {done.stderr.strip()}")
    else:
        pytest.skip("needs ../shared (CIFAR-10 data) or $LCP_DATA/cifar10")
    env_weights = os.environ.get("LCP_WEIGHTS")
    if env_weights and (Path(env_weights).expanduser() / "resnet56_cifar10.pt").is_file():
        weights = Path(env_weights).expanduser()
    elif shared is not None and (shared / "weights" / "resnet56_cifar10.pt").is_file():
        weights = shared / "weights"
    else:
        pytest.skip("needs ../shared (CIFAR-10 checkpoints) or $LCP_WEIGHTS")
    return CifarEnv(data=data, weights=weights)


@pytest.fixture()
def cifar_env(_cifar_paths: CifarEnv, monkeypatch: pytest.MonkeyPatch) -> CifarEnv:
    """``$LCP_DATA``/``$LCP_WEIGHTS`` set for the real CIFAR-10 and its checkpoints (for this test only)."""
    monkeypatch.setenv("LCP_DATA", str(_cifar_paths.data))
    monkeypatch.setenv("LCP_WEIGHTS", str(_cifar_paths.weights))
    return _cifar_paths


@pytest.fixture()
def one_thread():
    """One torch thread: tiny models run 10-30x slower with two OpenMP threads on a busy 2-core machine.
    Modules use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Hugging Face hub access (``$HF_HUB_OFFLINE``, and the constant huggingface_hub read at import)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        import huggingface_hub.constants as hf
    except ImportError:
        return
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)

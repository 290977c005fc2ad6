"""A model that does not run on the example input is one line naming torch's reason and where it failed (not
torch.fx's ShapeProp wrapper), from ``build_graph``, ``count_macs`` and ``lcp check``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lcp
from lcp.engine.graph import root_cause
from tests.helpers import assert_one_line_error, lcp_cli


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x))


def _refusal(call, x: torch.Tensor) -> str:
    with pytest.raises(lcp.LcpError) as e:
        call(Net(), x)
    text = str(e.value)
    assert "\n" not in text and "ShapeProp" not in text and "OrderedDict" not in text, text
    return text


@pytest.mark.parametrize("call", [lcp.build_graph, lcp.count_macs], ids=["build_graph", "count_macs"])
def test_wrong_channels_name_torchs_reason_and_the_module(call) -> None:
    text = _refusal(call, torch.zeros(1, 1, 16, 16))
    assert "of shape (1, 1, 16, 16) (in stem.0): RuntimeError: " in text, text
    assert "expected input[1, 1, 16, 16] to have 3 channels, but got 1 channels instead" in text, text


@pytest.mark.parametrize("call", [lcp.build_graph, lcp.count_macs], ids=["build_graph", "count_macs"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.float16])
def test_a_wrong_dtype_is_named(call, dtype: torch.dtype) -> None:
    text = _refusal(call, torch.zeros(1, 3, 16, 16, dtype=dtype))
    assert f"of shape (1, 3, 16, 16) {str(dtype).removeprefix('torch.')} (in stem.0)" in text, text


def test_a_functional_op_is_named_by_its_node() -> None:
    class Cat(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, x[:, :, 1:]], dim=1)

    with pytest.raises(lcp.LcpError, match=r"\(in cat\): RuntimeError: Sizes of tensors must match"):
        lcp.build_graph(Cat(), torch.zeros(1, 3, 8, 8))


def test_root_cause_follows_raise_from_but_not_an_error_raised_while_handling_another() -> None:
    inner = ValueError("the reason")
    wrapper = RuntimeError("wrapper")
    wrapper.__cause__ = TypeError("middle")
    wrapper.__cause__.__cause__ = inner
    assert root_cause(wrapper) is inner
    try:
        try:
            raise KeyError("handled before")
        except KeyError:
            raise RuntimeError("the real error")  # noqa: B904 (its __context__ is the handled one)
    except RuntimeError as e:
        assert root_cause(e) is e  # it named the handled KeyError
    looped = RuntimeError("a")
    looped.__cause__ = RuntimeError("b")
    looped.__cause__.__cause__ = looped
    assert root_cause(looped) is looped.__cause__  # a cycle ends the walk


def test_check_refuses_an_empty_input_size_as_prune_does() -> None:
    res = lcp_cli("check", "--model", "resnet20", "--input-size", 3, 0, 32)
    assert_one_line_error(res, "input_size must be three positive numbers C H W, got [3, 0, 32]")
    assert res.out == ""  # refused before the model is built


def test_a_model_pruned_by_parts_names_the_real_reason_not_the_failed_trace() -> None:
    """lcp.prune falls back to the traceable parts of a model torch.fx cannot trace; a wrong input there was
    reported as the trace's UntraceableModel (the exception being handled), not as torch's reason."""

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            if y.sum() > 0:  # data-dependent control flow: not traceable whole
                y = y * 2
            return y.mean((2, 3))

    with pytest.raises(lcp.LcpError) as e:
        lcp.prune(Branchy(), torch.zeros(1, 1, 8, 8))
    text = str(e.value)
    assert "of shape (1, 1, 8, 8) (in conv): RuntimeError:" in text and "to have 3 channels" in text, text
    assert "UntraceableModel" not in text


def test_a_failure_of_the_counting_itself_is_not_blamed_on_the_input(monkeypatch: pytest.MonkeyPatch) -> None:
    import lcp.engine.cost as cost

    def broken(self, func, types, args=(), kwargs=None):
        raise ZeroDivisionError("a formula of lcp's counter")

    monkeypatch.setattr(cost._FlopCount, "__torch_dispatch__", broken)
    with pytest.raises(ZeroDivisionError, match="a formula of lcp's counter"):  # lcp's bug: a traceback to report
        lcp.count_macs(Net(), torch.zeros(1, 3, 16, 16))


class _Nested(nn.Module):
    """Takes its image inside a list (``key`` 0) or a dict (a multi-modal batch): torch.fx traces it whole."""

    def __init__(self, key: int | str) -> None:
        super().__init__()
        self.key = key
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.fc = nn.Linear(16, 4)

    def forward(self, batch: list | dict) -> torch.Tensor:
        return self.fc(self.body(batch[self.key]).mean((2, 3)))


@pytest.mark.parametrize("key", [0, "image"], ids=["list", "dict"])
def test_inputs_inside_a_list_or_dict_prune_verify_and_check(key, tmp_path) -> None:
    """Counting, verification, the train-mode and output checks read tensors inside containers (each was an
    AttributeError traceback); a latency budget, which times one input tensor, refuses such a model in one line."""
    from lcp.engine.cost import count_macs

    def wrap(t: torch.Tensor) -> list | dict:
        return [t] if key == 0 else {key: t}

    torch.manual_seed(0)
    model, x = _Nested(key).eval(), (wrap(torch.randn(2, 3, 16, 16)),)
    result = lcp.prune(model, x, budget=0.6, round_to=1)
    assert result.plan.macs_ratio <= 0.6 and result.plan.macs == count_macs(result.model, x)
    plain = nn.Sequential(model.body)  # the same convs on the bare tensor: the same MACs per sample
    assert result.plan.macs_base == count_macs(plain, torch.randn(2, 3, 16, 16)) + 16 * 4
    report = lcp.check(model, x, budget=0.6)
    assert (report.status, report.input_size) == ("ok", (3, 16, 16)), report.reason
    with pytest.raises(lcp.LcpError) as e:
        lcp.prune(model, x, budget=0.6, budget_type="latency")
    assert "one input tensor; this model takes a " in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(lcp.LcpError, match="batch of at least 1"):
        lcp.prune(model, (wrap(torch.randn(0, 3, 16, 16)),), budget=0.6)
    with pytest.raises(lcp.LcpError, match=r"one image batch \(N, C, H, W\)"):  # channels.json records C H W
        lcp.save(result, tmp_path / "saved", model_name="resnet20")
    assert not (tmp_path / "saved").exists()


def test_a_list_of_unbatched_images_is_counted_as_one_call() -> None:
    """A detector's input, a list of C x H x W images, is one sample (the whole call), not a batch of C."""
    from lcp.engine.cost import count_macs

    class Images(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, images: list) -> list:
            return [self.conv(im[None]) for im in images]

    model, image = Images(), torch.randn(3, 10, 10)
    one = count_macs(model.conv, image[None])
    assert count_macs(model, ([image],)) == one and count_macs(model, ([image, image],)) == 2 * one

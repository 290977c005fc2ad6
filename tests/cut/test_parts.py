"""Models torch.fx cannot trace whole: torchvision's detectors pruned by their traceable parts (``lcp.cut.parts``),
and a segmentation model that traces whole. Random weights, small inputs (SSDlite resizes to its fixed 320 px)."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision

import lcp
from lcp.cut.parts import PartsResult, traceable_parts
from tests.helpers import lcp_cli

SMALL = {"min_size": 96, "max_size": 96, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50}


def _detector(name: str, **kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=4, **kw).eval()


def _images() -> list[torch.Tensor]:
    return [torch.rand(3, 160, 160, generator=torch.Generator().manual_seed(1))]


@pytest.fixture(scope="module")
def faster_rcnn() -> tuple[torch.nn.Module, PartsResult]:
    model = _detector("fasterrcnn_mobilenet_v3_large_320_fpn", **SMALL)
    before = copy.deepcopy(model.state_dict())
    result = lcp.prune(model, (_images(),), budget=0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    return model, result


def test_a_detector_is_pruned_by_its_traceable_parts_and_still_returns_boxes(faster_rcnn) -> None:
    model, result = faster_rcnn
    assert isinstance(result, PartsResult)
    assert list(result.parts) == ["backbone", "roi_heads.box_head"]  # the RPN head takes a list: left whole
    for part in result.parts.values():
        assert part.plan.macs_ratio <= 0.5 and part.verification.max_rel_error < 1e-6
    assert 0.45 <= result.macs_ratio <= 0.5
    assert result.params_ratio < 0.6  # the box head's fc6 holds most of the parameters
    assert lcp.count_params(result.model) == result.params_pruned < lcp.count_params(model)
    with torch.no_grad():
        (out,) = result.model(_images())
    assert set(out) == {"boxes", "labels", "scores"} and out["boxes"].shape[1] == 4
    assert isinstance(result.model.transform, type(model.transform))  # pre- and post-processing kept as they were


def test_a_pruned_detector_recovers_with_its_own_loss(faster_rcnn) -> None:
    """``lcp.finetune(loss_fn=...)``: a model that is not a classifier trains with the caller's loss (a
    detector's loss dict, in train mode with its targets), on the caller's batches."""
    _, result = faster_rcnn
    model = copy.deepcopy(result.model)
    images = _images()
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 90.0, 120.0]]), "labels": torch.tensor([2])}]
    batches = [(images, targets)] * 2

    def detection_loss(m: torch.nn.Module, batch: tuple) -> torch.Tensor:
        return sum(m(*batch).values())

    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = lcp.finetune(model, lambda epoch: batches, epochs=1, lr=0.001, loss_fn=detection_loss, progress=False)
    assert out["steps"] == 2 and out["history"][0]["top1"] is None
    assert torch.isfinite(torch.tensor(out["history"][0]["loss"]))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(lcp.LcpError, match="loss_fn must return a scalar tensor"):
        lcp.finetune(model, lambda epoch: batches, epochs=1, loss_fn=lambda m, b: m(*b), progress=False)
    model.eval()
    with torch.no_grad():
        (det,) = model(images)
    assert set(det) == {"boxes", "labels", "scores"}


class _Block(torch.nn.Module):
    """A traceable block with a hidden width (an Ultralytics bottleneck)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = torch.nn.Conv2d(c, 2 * c, 3, padding=1), torch.nn.Conv2d(2 * c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(torch.relu(self.cv1(x)))


class _LayerLoop(torch.nn.Module):
    """Ultralytics' ``DetectionModel``: the parent runs the layers of a container one by one, each fed by the
    outputs its ``f`` names, in Python that torch.fx cannot trace; the container itself is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), _Block(8), _Block(8))
        for i, m in enumerate(self.model):
            m.f = [-1] if i == 0 else [-1, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(x).all()):  # control flow on values: what stops torch.fx here
            raise ValueError("non-finite input")
        y: list[torch.Tensor] = []
        for m in self.model:
            inputs = [x if j == -1 else y[j] for j in m.f]
            x = m(sum(inputs) if len(inputs) > 1 else inputs[0])
            y.append(x)
        return x.mean((2, 3))


def test_a_container_run_layer_by_layer_is_looked_into() -> None:
    """Ultralytics' YOLO layout: the container is never called, its layers are; they are the parts, and
    ``ignore`` keeps a part whole (YOLOv8n itself: docs/engine.md)."""
    torch.manual_seed(0)
    model = _LayerLoop().eval()
    x = torch.randn(1, 3, 16, 16)
    result = lcp.prune(model, x, budget=0.5)
    assert list(result.parts) == ["model.1", "model.2"]
    assert all(result.model.model[i].cv1.out_channels < 16 for i in (1, 2))
    assert result.model(x).shape == (1, 8)
    kept = lcp.prune(model, x, budget=0.5, ignore=["model.2"])
    assert list(kept.parts) == ["model.1"] and kept.model.model[2].cv1.out_channels == 16


def test_ignore_globs_see_full_module_names_and_one_matching_nothing_is_refused() -> None:
    """A part's layers are matched by their full names (``*1.cv1`` keeps ``model.1.cv1``, as it would in a model
    that traces whole); a glob that matches no conv of any part is refused as ``build_graph`` refuses it."""
    torch.manual_seed(0)
    model = _LayerLoop().eval()
    x = torch.randn(1, 3, 16, 16)
    kept = lcp.prune(model, x, budget=0.7, ignore=["*1.cv1"])
    assert kept.model.model[1].cv1.out_channels == 16 and kept.model.model[2].cv1.out_channels < 16
    with pytest.raises(lcp.LcpError) as e:
        lcp.prune(model, x, budget=0.5, ignore=["nomatch*"])
    assert str(e.value) == (
        "ignore 'nomatch*' matches no conv or linear module of _LayerLoop (its modules are named like "
        "model.1.cv1, model.1.cv2, model.2.cv1, ...)"
    )
    with pytest.raises(lcp.LcpError, match="--ignore 'nomatch.' matches no conv"):  # lcp check: bad input too
        lcp.check(model, x, ignore=["nomatch*"])


def test_the_callers_modes_are_kept_in_the_model_and_in_its_pruned_copy() -> None:
    torch.manual_seed(0)
    model = _LayerLoop().train()
    model.model[1].eval()
    before = {name: m.training for name, m in model.named_modules()}
    result = lcp.prune(model, torch.randn(2, 3, 16, 16), budget=0.5)
    assert {name: m.training for name, m in model.named_modules()} == before
    assert {name: m.training for name, m in result.model.named_modules()} == before


def test_parts_are_the_largest_traceable_submodules() -> None:
    model = _detector("ssdlite320_mobilenet_v3_large", topk_candidates=50)  # resizes to 320 px: its size is fixed
    parts = traceable_parts(model, (_images(),))
    assert [p.name for p in parts] == ["backbone"]  # the head takes a list of feature maps
    result = lcp.prune(model, (_images(),), budget=0.5, budget_type="params")
    assert result.parts["backbone"].plan.params_ratio <= 0.5
    with torch.no_grad():
        (out,) = result.model(_images())
    assert out["boxes"].shape[1] == 4


def test_a_segmentation_model_traces_whole_and_prunes() -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(
        "lraspp_mobilenet_v3_large", weights=None, weights_backbone=None, num_classes=3
    )
    x = torch.rand(1, 3, 32, 32)
    result = lcp.prune(model.eval(), x, budget=0.5)
    assert result.plan.macs_ratio <= 0.5 and result.verification.max_rel_error < 1e-6
    with torch.no_grad():
        assert result.model(x)["out"].shape == (1, 3, 32, 32)


def test_what_parts_cannot_do_is_one_line(faster_rcnn) -> None:
    model, result = faster_rcnn
    with pytest.raises(lcp.LcpError, match="traceable parts can be pruned, but not with method lcp"):
        lcp.prune(model, (_images(),), budget=0.5, method="lcp")
    with pytest.raises(lcp.LcpError, match="pruned by its traceable parts"):
        lcp.save(result, "unused", model_name="tv:fasterrcnn_mobilenet_v3_large_320_fpn")


def test_check_names_the_parts_it_prunes() -> None:
    code, out, err = lcp_cli(
        "check",
        "--model",
        "tv:fasterrcnn_mobilenet_v3_large_320_fpn",
        "--num-classes",
        "4",
        "--input-size",
        "3",
        "64",
        "64",
    )
    assert code == 0, err
    assert "OK, pruned to" in out and "pruned by its traceable parts" in out
    assert "backbone (" in out and "roi_heads.box_head (" in out


def test_a_model_with_no_traceable_part_is_one_line() -> None:
    class Lists(torch.nn.Module):  # takes a list, and its only layer takes a list too
        def __init__(self) -> None:
            super().__init__()
            self.inner = Inner()

        def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
            return self.inner([x * 2 for x in xs])

    class Inner(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
            return sum(self.conv(x) for x in xs)

    with pytest.raises(lcp.LcpError, match="no part of it that takes tensors traces with prunable channels"):
        lcp.prune(Lists(), ([torch.rand(1, 3, 8, 8)],), budget=0.5)


def test_a_branch_only_training_runs_is_refused_not_returned_broken() -> None:
    """GoogLeNet / Inception style: an auxiliary head called only in train mode reads a tensor whose channels the
    eval-mode trace sees as free; the cut would break training, so it is refused with the modules named."""

    class WithAux(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU())
            self.body = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU())
            self.aux = torch.nn.Conv2d(16, 2, 1)
            self.head = torch.nn.Conv2d(16, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            aux = self.aux(x) if self.training else None
            out = self.head(self.body(x)).mean((2, 3))
            return out + aux.mean((2, 3)) if aux is not None else out

    torch.manual_seed(0)
    with pytest.raises(lcp.LcpError, match=r"not in train mode .*modules only training runs \(aux\)"):
        lcp.prune(WithAux().eval(), torch.rand(1, 3, 12, 12), budget=0.5)
    result = lcp.prune(WithAux().eval(), torch.rand(1, 3, 12, 12), budget=0.5, ignore=["stem.0"])
    assert result.plan.macs_ratio <= 0.5


class _ListOfImages(torch.nn.Module):
    """A detector in miniature: it takes a list of images, so torch.fx cannot trace it whole."""

    def __init__(self) -> None:
        super().__init__()
        c = torch.nn.Conv2d
        self.backbone = torch.nn.Sequential(c(3, 32, 3, padding=1), torch.nn.ReLU(), c(32, 64, 3, padding=1))
        self.head = torch.nn.Sequential(torch.nn.ReLU(), c(64, 16, 1), torch.nn.ReLU(), c(16, 4, 1))

    def forward(self, images: list) -> list:
        return [self.head(self.backbone(im[None])) for im in images]


def test_a_frozen_part_is_pruned_like_a_trainable_one() -> None:
    """Frozen weights (a head-only fine-tuning setup) are still weights to cut: the budget covers them."""
    torch.manual_seed(0)
    net = _ListOfImages()
    x = ([torch.randn(3, 16, 16)],)
    trainable = lcp.prune(net, x, budget=0.5, round_to=1)
    net.backbone.requires_grad_(False)
    frozen = lcp.prune(net, x, budget=0.5, round_to=1)
    assert list(frozen.parts) == list(trainable.parts) == ["backbone", "head"]
    assert frozen.macs_base == trainable.macs_base and frozen.macs_pruned == trainable.macs_pruned


def test_a_part_called_several_times_counts_the_macs_of_every_call() -> None:
    """A head run once per feature level (here: once per image, two sizes) costs every call; only the first
    call's MACs were counted, and a level called on nothing costs nothing."""
    from lcp.engine.cost import count_macs

    torch.manual_seed(0)
    net = _ListOfImages()
    images = [torch.randn(3, 16, 16), torch.randn(3, 24, 24)]
    result = lcp.prune(net, (images,), budget=0.5, round_to=1)
    assert list(result.parts) == ["backbone", "head"]

    def macs(model: torch.nn.Module) -> int:
        return sum(
            count_macs(model.backbone, im[None]) + count_macs(model.head, model.backbone(im[None])) for im in images
        )

    with torch.no_grad():
        assert (result.macs_base, result.macs_pruned) == (macs(net), macs(result.model))
    assert result.macs_ratio <= 0.5

    class EmptyLevel(_ListOfImages):
        def forward(self, images: list) -> list:
            features = [self.backbone(im[None]) for im in images]  # a loop over a list: no whole trace
            return [self.head(features[0]), self.head(features[0][:0])]

    torch.manual_seed(0)
    net = EmptyLevel()
    result = lcp.prune(net, ([images[0]],), budget=0.5, round_to=1)
    x = images[0][None]
    with torch.no_grad():
        assert result.macs_base == count_macs(net.backbone, x) + count_macs(net.head, net.backbone(x))


def test_check_runs_its_train_step_under_no_grad_and_on_frozen_weights() -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3)
    )
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert lcp.check(net, x).ok
    assert lcp.check(net.requires_grad_(False), x).ok
    assert not any(p.requires_grad for p in net.parameters())  # the caller's model as it was


def test_an_error_names_the_innermost_lcp_frame_with_its_package_path() -> None:
    from lcp.cut.diagnose import describe_exception
    from lcp.engine.graph import build_graph

    try:
        build_graph(torch.nn.Conv2d(3, 4, 3), object())  # fails inside lcp.engine, not lcp.cut
    except Exception as e:  # noqa: BLE001
        text = describe_exception(e)
    assert "(lcp/engine/" in text and "(lcp/graph.py" not in text

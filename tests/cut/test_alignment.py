"""``round_to="auto"``: the alignment rule on given timings, and the option through the API, a recipe and the CLI.

The rule is tested on synthetic timings; the measurement itself is only run (its choice depends on the machine)
with ``lcp.cut.latency.time_layer`` replaced by a deterministic stand-in where the choice is asserted.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lcp
import lcp.cut.latency
from lcp.cut.alignment import ALIGNMENTS, choose_alignment, group_alignment, measure_alignment
from lcp.errors import LcpError
from lcp.models.zoo import CifarResNet
from lcp.options import from_mapping
from lcp.run.config import PruneConfig

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTHS = list(range(33, 81))


def test_rising_cost_needs_no_alignment():
    ms = {c: 0.2 + 0.01 * c + 0.001 * c * c for c in WIDTHS}
    chosen, score = choose_alignment(ms)
    assert chosen == 1
    assert set(score) == set(ALIGNMENTS) and all(s == pytest.approx(1.0, abs=0.01) for s in score.values())


def test_widths_off_a_multiple_of_eight_that_run_slower_choose_eight():
    """A GPU-like penalty: widths off a multiple of 8 run 1.6 times slower than their size says."""
    ms = {c: 0.01 * c * (1.0 if c % 8 == 0 else 1.6) for c in WIDTHS}
    chosen, score = choose_alignment(ms)
    assert chosen == 8
    assert score[8] < 0.8 < score[4] < score[1]


def test_steps_of_sixteen_choose_sixteen():
    """A CPU-like blocked layout: widths off a multiple of 16 are padded up to the next block and cost as much as
    it, so the multiples of 16 are the cheap widths."""
    ms = {c: 0.5 + 0.001 * (-(-c // 16) * 16) ** 2 for c in WIDTHS}
    assert choose_alignment(ms)[0] == 16


def test_penalty_everywhere_takes_the_least_slowed():
    ms = {c: 1.0 + (0.5 if c % 16 else 0.0) + (0.3 if c % 32 == 16 else 0.0) for c in WIDTHS}
    chosen, _ = choose_alignment(ms)
    assert chosen == 16


def test_measure_alignment_times_the_costliest_conv(monkeypatch):
    """With a stand-in timing that penalises widths off a multiple of 4, the measurement chooses 4."""
    seen = []

    def fake_time_layer(module, n_in, n_out, depthwise, shapes, **kw):
        seen.append((type(module).__name__, n_in, n_out))
        return 0.01 * n_out * (1.0 if n_out % 4 == 0 else 2.0)

    monkeypatch.setattr(lcp.cut.latency, "time_layer", fake_time_layer)
    graph = lcp.build_graph(CifarResNet(1).eval(), torch.zeros(1, 3, 16, 16))
    found = measure_alignment(graph)
    assert found.round_to == 4
    assert {name for name, _, _ in seen} == {"Conv2d"}
    assert "--round-to auto chose 4" in found.describe()


def test_prune_with_auto_keeps_the_measured_multiple(monkeypatch):
    monkeypatch.setattr(
        lcp.cut.latency, "time_layer", lambda m, n_in, n_out, dw, shapes, **kw: 0.01 * n_out * (1 + (n_out % 8 > 0))
    )
    found = []
    measure = lcp.cut.alignment.measure_alignment
    monkeypatch.setattr(
        lcp.cut.alignment, "measure_alignment", lambda *a, **k: found.append(measure(*a, **k)) or found[-1]
    )
    torch.manual_seed(0)
    model = CifarResNet(1).eval()
    res = lcp.prune(model, torch.zeros(1, 3, 16, 16), budget=0.5, round_to="auto")
    assert [f.round_to for f in found] == [8]  # measured once, and the cut below is the one of that multiple
    convs = [(a.out_channels, b.out_channels) for a, b in zip(model.modules(), res.model.modules())
             if isinstance(a, torch.nn.Conv2d)]  # fmt: skip
    assert all(w % min(8, full // 4) == 0 for full, w in convs), convs  # 8, halved for the 16-channel groups
    assert np.array_equal(
        res.plan.removed, lcp.prune(model, torch.zeros(1, 3, 16, 16), budget=0.5, round_to=8).plan.removed
    )


def test_a_multiple_over_a_quarter_of_a_group_is_halved_for_that_group_only():
    """``round_to=16`` (the default of ``lcp.prune`` and ``lcp prune``) on a CIFAR ResNet: the 64-channel groups
    keep multiples of 16, the 32-channel groups multiples of 8 and the 16-channel groups multiples of 4, so that
    each has at least four widths to choose from (a global 16 would keep the 16-channel groups whole)."""
    assert group_alignment(np.array([16, 32, 64, 3, 24, 1, 960]), 16).tolist() == [4, 8, 16, 1, 4, 1, 16]
    assert group_alignment(np.array([16, 64]), 1).tolist() == [1, 1]
    torch.manual_seed(0)
    assert PruneConfig().round_to == 16
    res = lcp.prune(CifarResNet(2).eval(), torch.zeros(1, 3, 16, 16), budget=0.5)
    kept = [(len(g.units), int((~res.plan.removed[np.asarray(g.units)]).sum())) for g in res.graph.groups]
    assert all(k == n or k % (n // 4) == 0 for n, k in kept), kept
    assert any(k < n for n, k in kept if n == 16) and any(k < n for n, k in kept if n >= 32), kept


def test_auto_on_the_real_clock_returns_an_alignment():
    graph = lcp.build_graph(CifarResNet(1).eval(), torch.zeros(1, 3, 16, 16))
    found = measure_alignment(graph, rounds=1, repeats=1)
    assert found.round_to in ALIGNMENTS and len(found.ms) == 48


@pytest.mark.parametrize("value", ["fast", 0, True, 1.5, "8"])
def test_bad_round_to_is_one_line(value):
    with pytest.raises(LcpError, match="round_to"):
        from_mapping(PruneConfig, {"round_to": value}, "recipe")


def test_round_to_accepts_numbers_and_auto():
    assert from_mapping(PruneConfig, {"round_to": "auto"}, "recipe") == {"round_to": "auto"}
    assert from_mapping(PruneConfig, {"round_to": 8}, "recipe") == {"round_to": 8}


def test_a_cut_far_under_its_budget_says_why():
    """One 64-channel stream in multiples of 16: 48 channels keep 0.56 of the MACs, 32 keep 0.25. The cut lands at
    0.25 for a budget of 0.5, and said nothing; at any width it lands at the budget, silently."""

    class Shared(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 64, 3, padding=1)
            self.shared = torch.nn.Conv2d(64, 64, 3, padding=1)
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.stem(x))
            for _ in range(3):
                x = x + torch.relu(self.shared(x))
            return self.fc(x.mean((2, 3)))

    x = torch.zeros(1, 3, 32, 32)
    coarse = lcp.prune(Shared(), x, budget=0.5, round_to=16).plan
    assert coarse.macs_ratio < 0.3
    assert "0.254 of the macs for a budget of 0.5: no cut lands closer" in coarse.describe()
    fine = lcp.prune(Shared(), x, budget=0.5, round_to=1).plan
    assert 0.49 <= fine.macs_ratio <= 0.5 and "no cut lands closer" not in fine.describe()

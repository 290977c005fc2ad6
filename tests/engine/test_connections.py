"""Connection-level pruning of DenseNets (lcp.engine.connections): discovery, surgery, budgets, save and load.

The ads / lwp controllers that search the connections are tested in tests/methods/test_controllers.py.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lcp.engine.connections import ConnectionGraph, ZeroConv, build
from lcp.engine.cost import count_macs, count_params
from lcp.errors import LcpError, UnreachableBudget
from lcp.models.zoo import resnet20
from tests.helpers import tiny_densenet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cg() -> ConnectionGraph:
    return build(tiny_densenet(), torch.zeros(1, 3, 16, 16))


def names(cg: ConnectionGraph) -> list[tuple[str, str]]:
    recs = cg.graph.records
    return [(cg.consumers[int(c)].name, recs[int(s)].name) for s, c in zip(cg.src, cg.dst)]


# ------------------------------------------------------------------------------------------------ discovery


def test_discovery_matches_the_dense_blocks(cg):
    # per block: 3 dense layers + transition (or classifier), sources = block input + earlier layers
    assert cg.n == 3 * (1 + 2 + 3 + 4)
    assert len(cg.consumers) == 12
    pairs = set(names(cg))
    assert ("dense1.2.conv", "dense1.0.conv") in pairs and ("trans1.conv", "conv1") in pairs
    assert ("dense2.0.conv", "trans1.conv") in pairs and ("linear", "dense3.2.conv") in pairs
    assert ("dense2.1.conv", "conv1") not in pairs  # the transition cuts the dense paths
    widths = {p: int(w) for p, w in zip(names(cg), cg.width)}
    assert widths[("dense1.1.conv", "conv1")] == 6 and widths[("dense1.1.conv", "dense1.0.conv")] == 4
    # every dense layer owns the BN in front of it; the classifier owns the final BN
    norms = {c.name: cg.graph.records[c.norm].name for c in cg.consumers}
    assert norms["dense1.1.conv"] == "dense1.1.bn" and norms["linear"] == "bn"
    assert [c.pinned for c in cg.consumers if c.name == "linear"] == [True]
    adj = cg.adjacency(cg.full())
    assert len(adj) == 3
    keep = np.array(adj[0]["keep"])
    assert keep.shape == (4, 4) and adj[0]["sources"][0] == "conv1"
    assert np.array_equal(keep, np.tril(np.ones((4, 4), dtype=bool)))


def test_model_without_concat_is_refused():
    with pytest.raises(LcpError, match="no dense connections"):
        build(resnet20(), torch.zeros(1, 3, 32, 32))


# ------------------------------------------------------------------------------------------------ surgery


def test_removing_one_connection_matches_masked_original_and_leaves_others(cg):
    keep = cg.full()
    k = names(cg).index(("dense1.2.conv", "dense1.0.conv"))
    keep[k] = False
    pruned, v = cg.prune(keep)
    assert v.ok and v.max_rel_error < 1e-10
    conv = pruned.get_submodule("dense1.2.conv")
    assert conv.in_channels == 6 + 4 + 4 - 4
    assert pruned.get_submodule("dense1.2.bn").num_features == 10
    ref = cg.graph.model
    kept = np.r_[0:6, 10:14]
    assert torch.equal(conv.weight, ref.get_submodule("dense1.2.conv").weight[:, kept])
    # other consumers of dense1.0.conv keep it, untouched
    assert pruned.get_submodule("trans1.conv").in_channels == 18
    assert torch.equal(pruned.get_submodule("trans1.conv").weight, ref.get_submodule("trans1.conv").weight)
    assert pruned.get_submodule("dense1.0.conv").out_channels == 4
    # the original is not touched
    assert ref.get_submodule("dense1.2.conv").in_channels == 14


def test_verification_fails_for_a_wrong_network(cg):
    keep = cg.full()
    keep[names(cg).index(("trans1.conv", "dense1.1.conv"))] = False
    pruned = cg.apply(keep)
    assert cg.verify(keep, pruned).ok
    assert not cg.verify(cg.full(), pruned).ok  # compared with the unmasked original: differs
    broken = copy.deepcopy(pruned)
    with torch.no_grad():
        broken.get_submodule("trans1.conv").weight[:, 0] += 1.0
    assert not cg.verify(keep, broken).ok
    with torch.no_grad():
        broken.get_submodule("trans1.conv").weight.fill_(float("nan"))
    assert not cg.verify(keep, broken).ok  # NaN outputs are no match either


def test_dead_layer_is_dropped(cg):
    keep = cg.full()
    # nobody reads dense2.1.conv any more: its consumers dense2.2 and trans2 drop it
    for pair in (("dense2.2.conv", "dense2.1.conv"), ("trans2.conv", "dense2.1.conv")):
        keep[names(cg).index(pair)] = False
    alive = cg.alive(keep)
    dead = [c.name for c, a in zip(cg.consumers, alive) if not a]
    assert dead == ["dense2.1.conv"]
    pruned, v = cg.prune(keep)
    assert v.ok
    assert isinstance(pruned.get_submodule("dense2.1.conv"), ZeroConv)
    with pytest.raises(AttributeError):
        pruned.get_submodule("dense2.1.bn")
    macs, params = cg.evaluate(keep)
    assert macs == count_macs(pruned, cg.graph.example_inputs) and params == count_params(pruned)


@pytest.mark.parametrize("seed", range(6))
def test_exact_cost_of_random_masks(cg, seed):
    rng = np.random.default_rng(seed)
    keep = cg.project(rng.random(cg.n) < rng.uniform(0.2, 0.9), rng.random(cg.n), budget=1.0, fill=False)
    pruned, v = cg.prune(keep, check_cost=False)
    assert v.ok
    assert cg.evaluate(keep) == (count_macs(pruned, cg.graph.example_inputs), count_params(pruned))


def test_full_mask_costs_the_baseline(cg):
    m = cg.graph.model
    assert cg.evaluate(cg.full()) == (count_macs(m, cg.graph.example_inputs), count_params(m))


def test_invalid_mask_is_refused(cg):
    keep = cg.full()
    keep[cg.consumers[-1].sources] = False  # the classifier reads nothing
    with pytest.raises(LcpError, match="keep none"):
        cg.apply(keep)
    with pytest.raises(LcpError, match="entries"):
        cg.check(np.ones(3, dtype=bool))


def test_names_round_trip(cg):
    rng = np.random.default_rng(5)
    keep = cg.project(rng.random(cg.n) < 0.5, rng.random(cg.n), budget=0.6)
    assert np.array_equal(cg.from_names(cg.names(keep)), keep)
    with pytest.raises(LcpError, match="does not exist"):
        cg.from_names([["linear", "nope"]])


# ------------------------------------------------------------------------------------------------ budget


@pytest.mark.parametrize("metric", ["macs", "params"])
@pytest.mark.parametrize("budget", [0.3, 0.5, 0.8])
def test_projection_meets_the_budget(cg, metric, budget):
    rng = np.random.default_rng(1)
    for _ in range(3):
        keep = cg.project(rng.random(cg.n) < 0.9, rng.random(cg.n), budget=budget, metric=metric)
        value = cg.value(keep, metric)
        assert value <= budget * cg.base(metric)
        # filled up: no dropped connection could be added back within the budget
        for k in np.nonzero(~keep)[0]:
            more = keep.copy()
            more[k] = True
            assert cg.value(more, metric) > budget * cg.base(metric) or cg.value(more, metric) == value


def test_unreachable_budget_reports_the_lowest(cg):
    lowest = cg.value(cg.minimal(), "macs") / cg.macs_base
    assert 0 < lowest < 0.3
    with pytest.raises(UnreachableBudget) as e:
        cg.project(cg.full(), np.zeros(cg.n), budget=lowest * 0.9)
    assert e.value.lowest == pytest.approx(lowest)
    keep = cg.project(cg.full(), np.zeros(cg.n), budget=lowest)
    assert cg.value(keep, "macs") <= lowest * cg.macs_base


def test_projection_at_a_low_budget_is_valid(cg):
    # regression: filling the minimal mask re-added a connection out of a consumer the fallback left without
    # inputs, so the result read a dead layer (LcpError "keep none of its input connections")
    keep = cg.project(cg.full(), np.zeros(cg.n), budget=0.3)
    cg.check(keep)
    assert cg.value(keep, "macs") <= 0.3 * cg.macs_base


@pytest.mark.parametrize("metric", ["macs", "params"])
def test_projection_is_valid_for_every_reachable_budget(cg, metric):
    lowest = cg.value(cg.minimal(metric), metric) / cg.base(metric)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        priority = np.zeros(cg.n) if seed == 0 else rng.random(cg.n)
        for budget in np.linspace(lowest, 1.0, 15):
            for start in (cg.full(), rng.random(cg.n) < 0.5):
                keep = cg.project(start, priority, budget=float(budget), metric=metric)
                cg.check(keep)
                assert cg.value(keep, metric) <= budget * cg.base(metric) + 1e-6


def test_minimal_mask_keeps_one_connection_per_live_consumer(cg):
    keep = cg.minimal()
    assert cg.prune(keep)[1].ok
    alive = cg.alive(keep)
    assert all(keep[c.sources].sum() == 1 for c, a in zip(cg.consumers, alive) if a)
    # brute force per block (blocks' costs are independent): the DP minimum is the true minimum
    full = cg.value(cg.full(), "macs")
    total = full
    for b in range(3):
        ks = [k for k in range(cg.n) if cg.consumers[int(cg.dst[k])].block == b]
        best = full
        for bits in range(1 << len(ks)):
            mask = cg.full()
            mask[ks] = [(bits >> i) & 1 == 1 for i in range(len(ks))]
            try:
                cg.check(mask)
            except LcpError:
                continue
            best = min(best, cg.value(mask, "macs"))
        total += best - full
    assert cg.value(keep, "macs") == total


# ------------------------------------------------------------------------------------------------ save / load


def test_channels_json_rebuilds_the_connection_pruned_model(cg, tmp_path):
    from lcp.io import load_tensors
    from lcp.models import store

    rng = np.random.default_rng(2)
    keep = cg.project(rng.random(cg.n) < 0.5, rng.random(cg.n), budget=0.5)
    assert not cg.alive(keep).all()  # a dead layer makes the round trip harder
    pruned, _ = cg.prune(keep)
    graph = cg.graph
    spec = store.channels_spec(
        graph,
        np.zeros(len(graph.units), dtype=bool),
        pruned,
        model_name="tiny",
        num_classes=10,
        input_size=(3, 16, 16),
        extra={"removed_connections": cg.names(keep)},
    )
    store.write(tmp_path, pruned, spec)
    rebuilt = store.rebuild(spec, base_model=tiny_densenet(seed=1))  # other weights: architecture only
    rebuilt.load_state_dict(load_tensors(tmp_path / "model.safetensors"), strict=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), pruned.eval()(x), atol=1e-6)
    bad = dict(spec, removed_connections=[["linear", "dense9.conv"]])
    with pytest.raises(LcpError, match="does not exist"):
        store.rebuild(bad, base_model=tiny_densenet())


def test_timm_densenet121_connections_verify():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    m = timm.create_model("densenet121", pretrained=False, num_classes=10).eval()
    cg = build(m, torch.zeros(1, 3, 32, 32))
    assert len({c.block for c in cg.consumers}) == 4
    assert not any(cg.consumers[i].can_die and not cg.consumers[i].pinned for i in range(len(cg.consumers)))
    rng = np.random.default_rng(0)
    keep = cg.project(rng.random(cg.n) < 0.6, rng.random(cg.n), budget=0.7)
    pruned, v = cg.prune(keep)  # also checks count_macs / count_params against the cost model
    assert v.ok and cg.value(keep, "macs") <= 0.7 * cg.macs_base

"""The bookkeeping of the benchmark scripts, with every measurement stubbed (no model is trained or timed):
``support_matrix.py`` (``--redo`` and ``--resume`` keep the rows and the run's metadata, the page reads every
re-run), ``engine_speed.py`` and ``search_speed.py`` (a row replaces its own row, written as it is measured) and
``latency_noise.py repeat-cut`` (its log reaches the timings the cut takes)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.helpers import REPO, load_script

BENCH = REPO / "benchmarks"


_module = load_script


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------- support_matrix.py


@pytest.fixture
def sm(monkeypatch):
    """support_matrix.py with its workers stubbed: each model's row is ``ok`` at once, and ``stop`` names the
    models whose check is interrupted (KeyboardInterrupt, like Ctrl-C); ``submitted`` lists the models run."""
    pytest.importorskip("timm")
    mod = _module(BENCH / "support_matrix.py", "support_matrix_scripts_under_test")
    mod.stop, mod.submitted = set(), []

    class Worker:
        def __init__(self, ctx, args):
            self.name = None

        def submit(self, name):
            self.name = name
            mod.submitted.append(name)

        def poll(self):
            if self.name is None:
                return None
            if self.name in mod.stop:
                raise KeyboardInterrupt
            name, self.name = self.name, None
            return {"model": name, "status": "ok", "reason": "", "macs_ratio": 0.4999, "seconds": 2.0}

        def close(self):
            pass

    monkeypatch.setattr(mod, "Worker", Worker)
    monkeypatch.setattr(mod, "family", lambda name: "fam")
    return mod


def _matrix(sm, path: Path, rows: list[tuple[str, str]], meta: dict | None = None) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=sm.COLUMNS)
        w.writeheader()
        for model, status in rows:
            w.writerow({"model": model, "family": "fam", "status": status, "reason": "old", "seconds": "1.0"})
    if meta is not None:
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1))


OLD_META = {
    "timm": "1.0.31",
    "wall_s": 2091.1,
    "workers": 2,
    "timeout": 60.0,
    "every": 1,
    "models_listed": 4,
    "cpus": 2,
    "date": "2026-11-22",
    "command": "python benchmarks/support_matrix.py --workers 2 --timeout 60",
    "redos": [
        {
            "statuses": ["refused"],
            "models": 1,
            "wall_s": 3.0,
            "timm": "1.0.31",
            "cpus": 2,
            "workers": 2,
            "date": "2026-11-23",
            "command": "python benchmarks/support_matrix.py --redo refused",
        }
    ],
}


def test_an_interrupted_redo_keeps_the_rows_it_has_not_redone_and_goes_on_when_run_again(sm, tmp_path):
    out = tmp_path / "m.csv"
    _matrix(sm, out, [("a", "ok"), ("b", "refused"), ("c", "refused"), ("d", "timeout")], OLD_META)
    sm.stop = {"c"}
    with pytest.raises(KeyboardInterrupt):
        sm.main(["--redo", "refused", "--out", str(out), "--workers", "1"])
    rows = {r["model"]: r for r in _rows(out)}
    assert rows.keys() == {"a", "b", "c", "d"}  # c's old row is still there
    assert (rows["b"]["status"], rows["c"]["status"]) == ("ok", "refused")
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["redo_pending"]["left"] == ["c"] and meta["redos"] == OLD_META["redos"]

    sm.stop, sm.submitted = set(), []
    assert sm.main(["--redo", "refused", "--out", str(out), "--workers", "1"]) == 0
    assert sm.submitted == ["c"]  # b, redone and ok now, is not run again
    rows = {r["model"]: r for r in _rows(out)}
    assert rows.keys() == {"a", "b", "c", "d"} and [rows[m]["status"] for m in "bcd"] == ["ok", "ok", "timeout"]
    assert rows["a"]["reason"] == "old" and rows["d"]["reason"] == "old"
    meta = json.loads(out.with_suffix(".json").read_text())
    assert "redo_pending" not in meta and meta["date"] == "2026-11-22" and meta["wall_s"] == 2091.1
    assert len(meta["redos"]) == 2
    assert (meta["redos"][1]["statuses"], meta["redos"][1]["models"]) == (["refused"], 2)

    # another --redo while one is pending is refused, with nothing changed
    sm.stop = {"a"}
    with pytest.raises(KeyboardInterrupt):
        sm.main(["--redo", "a,d", "--out", str(out), "--workers", "1"])
    before = out.read_text(), out.with_suffix(".json").read_text()
    assert sm.main(["--redo", "timeout", "--out", str(out), "--workers", "1"]) == 2
    assert (out.read_text(), out.with_suffix(".json").read_text()) == before


def test_a_resume_with_nothing_to_run_leaves_the_metadata_alone(sm, tmp_path):
    out = tmp_path / "m.csv"
    _matrix(sm, out, [("a", "ok"), ("b", "refused")], OLD_META)
    before = out.with_suffix(".json").read_text()
    assert sm.main(["--resume", "--models", "a,b", "--out", str(out)]) == 0
    assert out.with_suffix(".json").read_text() == before and sm.submitted == []


def test_a_resume_keeps_the_runs_date_command_and_redos(sm, tmp_path):
    out = tmp_path / "m.csv"
    _matrix(sm, out, [("a", "ok"), ("b", "refused")], OLD_META)
    assert sm.main(["--resume", "--models", "a,b,c", "--out", str(out), "--workers", "1"]) == 0
    assert sm.submitted == ["c"]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["redos"] == OLD_META["redos"]
    assert (meta["date"], meta["command"]) == (OLD_META["date"], OLD_META["command"])
    assert 2091.1 <= meta["wall_s"] < 2091.1 + 60
    assert [r["models"] for r in meta["resumes"]] == [1]


def test_an_interrupted_fresh_run_replaces_the_metadata_of_the_run_before(sm, tmp_path, monkeypatch):
    """The metadata is written from the start, through lcp.io: a resume then adds to this run's wall time, not
    to that of an unrelated older run whose JSON was left beside the CSV."""
    out = tmp_path / "m.csv"
    _matrix(sm, out, [("a", "ok")], OLD_META)
    writes = []
    real = sm.atomic_write_json
    monkeypatch.setattr(sm, "atomic_write_json", lambda path, obj: (writes.append(Path(path)), real(path, obj)))
    sm.stop = {"c"}
    with pytest.raises(KeyboardInterrupt):
        sm.main(["--models", "b,c", "--out", str(out), "--workers", "1"])
    meta = json.loads(out.with_suffix(".json").read_text())
    assert "redos" not in meta and meta["wall_s"] < 60 and meta["command"] != OLD_META["command"]
    assert writes and set(writes) == {out.with_suffix(".json")}
    assert [r["model"] for r in _rows(out)] == ["b"]


def test_the_page_shows_every_redo_of_the_large_run(sm, tmp_path):
    out, large = tmp_path / "m.csv", tmp_path / "m_large.csv"
    _matrix(sm, out, [("a", "ok"), ("big", "skipped")], OLD_META)
    redo = {**OLD_META["redos"][0], "command": "python benchmarks/support_matrix.py --redo refused --out large"}
    _matrix(sm, large, [("big", "ok")], {**OLD_META, "redos": [redo]})
    page = tmp_path / "support.md"
    assert sm.main(["--markdown", str(page), "--out", str(out), "--large", str(large)]) == 0
    text = page.read_text().split("## torchvision")[0]  # the repository's torchvision section has redos of its own
    assert text.count("After an engine change") == 1
    assert "The large run's refused rows likewise (2026-11-23, `python benchmarks/support_matrix.py --redo " in text


def test_the_torchvision_section_shows_its_redos(sm):
    redo = {**OLD_META["redos"][0], "command": "python benchmarks/support_matrix.py --torchvision --redo tv:a"}
    rows = [{"model": "tv:a", "family": "torchvision classification", "status": "ok", "reason": "", "parts": ""}]
    text = "\n".join(sm.torchvision_section(rows, {**OLD_META, "redos": [redo]}))
    assert "`python benchmarks/support_matrix.py --torchvision --redo tv:a`" in text


def test_a_detector_whose_builder_refuses_an_image_size_is_built_at_its_own(sm, monkeypatch):
    pytest.importorskip("torchvision")
    import lcp.models.factory
    from lcp.errors import LcpError

    monkeypatch.setattr(sm, "family", lambda name: "torchvision detection")

    def create_model(name, **kw):  # what lcp says of SSD given min_size: one LcpError, not a TypeError
        if kw:
            raise LcpError(f"cannot create {name} with {', '.join(kw)}: got multiple values for argument 'min_size'")
        return "built"

    monkeypatch.setattr(lcp.models.factory, "create_model", create_model)
    assert sm._torchvision_model("tv:ssd300_vgg16")[0] == "built"


# --------------------------------------------------------------------------------------------- engine_speed.py


def test_engine_speed_updates_its_own_rows_as_it_measures_them(tmp_path, monkeypatch):
    es = _module(BENCH / "engine_speed.py", "engine_speed_scripts_under_test")
    monkeypatch.setattr(es.torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(es.torch, "get_num_threads", lambda: 1)
    out = tmp_path / "engine_speed.csv"
    old = [
        {
            "task": "plan",
            "model": "resnet56",
            "input": "3x32x32",
            "threads": "1",
            "budget": "0.5",
            "mode": "eval",
            "median_s": "0.128",
        },
        {
            "task": "prune",
            "model": "resnet20",
            "input": "3x32x32",
            "threads": "1",
            "budget": "0.5",
            "mode": "eval",
            "median_s": "0.0588",
        },
        {
            "task": "prune",
            "model": "resnet56",
            "input": "3x32x32",
            "threads": "1",
            "budget": "0.5",
            "mode": "eval",
            "median_s": "0.1547",
        },
    ]
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[c for c in es.COLUMNS if c not in ("machine", "torch", "date")])
        w.writeheader()
        w.writerows(old)

    def bench_prune(name, args):
        if name == "densenet40":
            raise KeyboardInterrupt
        return {"task": "prune", "model": name, "input": "3x32x32", "median_s": 0.5, "status": "ok"}

    monkeypatch.setattr(es, "bench_prune", bench_prune)
    monkeypatch.setattr(es, "print_table", lambda rows: None)
    assert es.main(["--models", "resnet20", "--skip-plan", "--out", str(out)]) == 0
    rows = {(r["task"], r["model"]): r for r in _rows(out)}
    assert rows.keys() == {("plan", "resnet56"), ("prune", "resnet20"), ("prune", "resnet56")}
    assert rows["prune", "resnet20"]["median_s"] == "0.5" and rows["prune", "resnet56"]["median_s"] == "0.1547"
    new = rows["prune", "resnet20"]
    assert new["torch"] == es.torch.__version__ and new["date"] and "CPUs" in new["machine"]
    with pytest.raises(KeyboardInterrupt):  # the rows measured before an interruption are kept
        es.main(["--models", "mobilenetv2,densenet40", "--skip-plan", "--out", str(out)])
    assert ("prune", "mobilenetv2") in {(r["task"], r["model"]) for r in _rows(out)}
    assert len(_rows(out)) == 4
    # another budget or mode is another measurement: a row of its own, the 0.5 eval-mode row kept
    es.main(["--models", "resnet20", "--skip-plan", "--budget", "0.3", "--out", str(out)])
    es.main(["--models", "resnet20", "--skip-plan", "--train-mode", "--out", str(out)])
    got = sorted((r["budget"], r["mode"]) for r in _rows(out) if r["model"] == "resnet20")
    assert got == [("0.3", "eval"), ("0.5", "eval"), ("0.5", "train")]


# --------------------------------------------------------------------------------------------- search_speed.py


@pytest.fixture
def ss(monkeypatch):
    """search_speed.py with the data, the search, the plans, the measurements and the fine-tuning stubbed."""
    pytest.importorskip("scipy")
    import lcp.cut.ranking
    import lcp.methods.legr
    import lcp.training.train

    mod = _module(BENCH / "search_speed.py", "search_speed_scripts_under_test")
    monkeypatch.setenv("LCP_DATA", "/nonexistent")
    monkeypatch.setenv("LCP_WEIGHTS", "/nonexistent")
    graph = SimpleNamespace(groups=[SimpleNamespace(name=f"g{i}") for i in range(3)])
    bundle = SimpleNamespace(loader=lambda *a, **k: None)
    monkeypatch.setattr(mod, "load", lambda args: (bundle, None, graph, None, None))
    calls = iter(range(10**6))
    monkeypatch.setattr(lcp.methods.legr, "make_fitness", lambda *a, **k: lambda tf: 1.0 + next(calls) % 7 / 10)
    history = [{"seconds": 0.1, "fitness": 1.2}, {"seconds": 0.1, "fitness": 1.1}]
    result = SimpleNamespace(history=history, best_fitness=1.1, transforms=None)
    monkeypatch.setattr(lcp.methods.legr, "search", lambda *a, **k: result)
    monkeypatch.setattr(lcp.methods.legr, "group_std", lambda graph, scores: np.ones(3))
    plan = SimpleNamespace(removed=None, macs_ratio=0.4998, params_ratio=0.6)
    monkeypatch.setattr(lcp.cut.ranking, "plan", lambda *a, **k: plan)
    metrics = {"holdout_loss": 1.0, "test_top1": 60.0, "test_loss": 1.2}
    monkeypatch.setattr(mod, "measure", lambda *a, holdout=True, **k: (None, metrics))
    mod.stop_at = None
    finetuned = iter(range(10**6))

    def finetune(*a, **k):
        if next(finetuned) == mod.stop_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(lcp.training.train, "finetune", finetune)
    scores = iter(range(10**6))
    monkeypatch.setattr(lcp.training.train, "evaluate", lambda *a, **k: {"top1": 70.0 + next(scores) % 5})
    return mod


def test_search_speed_rerun_replaces_its_rows(ss, tmp_path):
    argv = ["--candidates", "10", "--tag", "t", "--out", str(tmp_path)]
    ss.main(argv)
    ss.main(argv)
    rows = _rows(tmp_path / "search_speed.csv")
    assert [r["method"] for r in rows] == ["lcp", "global", "uniform", "random"]
    ss.main([*argv[:-2], "--eval-images", "5000", "--out", str(tmp_path)])  # other settings: rows of their own
    assert len(_rows(tmp_path / "search_speed.csv")) == 8
    ss.main([*argv[:-2], "--final-recal-batches", "10", "--out", str(tmp_path)])  # the report's recalibration too
    assert len(_rows(tmp_path / "search_speed.csv")) == 12


def test_kendall_rows_are_written_as_made_and_a_rerun_replaces_them(ss, tmp_path):
    argv = ["--kendall", "10", "--tag", "k", "--out", str(tmp_path)]
    ss.stop_at = 3
    with pytest.raises(KeyboardInterrupt):
        ss.main(argv)
    rows = _rows(tmp_path / "proxy_kendall.csv")
    assert [r["candidate"] for r in rows] == ["0", "1", "2"]
    assert all(r.get("kendall_tau_ft", "") == "" for r in rows)  # no tau of an unfinished run
    ss.stop_at = None
    ss.main(argv)
    ss.main(argv)
    rows = _rows(tmp_path / "proxy_kendall.csv")
    assert sorted(int(r["candidate"]) for r in rows) == list(range(10))
    assert len({r["kendall_tau_ft"] for r in rows}) == 1 and rows[0]["kendall_tau_ft"] != ""
    ss.main(["--kendall", "10", "--tag", "other", "--out", str(tmp_path)])
    ss.main(["--kendall", "12", "--tag", "k", "--ft-steps", "50", "--out", str(tmp_path)])
    ss.main(["--kendall", "10", "--tag", "k", "--out", str(tmp_path)])  # fewer candidates: none of the 12 left
    rows = _rows(tmp_path / "proxy_kendall.csv")
    assert sorted((r["tag"], r["ft_steps"]) for r in rows) == [("k", "100")] * 10 + [("other", "100")] * 10


# -------------------------------------------------------------------------------------------- latency_noise.py


def test_repeat_cut_logs_the_timings_the_cut_takes(monkeypatch, capsys):
    import lcp
    import lcp.cut.latency as L
    import lcp.cut.pruner as P
    import lcp.run.load

    ln = _module(BENCH / "latency_noise.py", "latency_noise_scripts_under_test")
    timing = {"ratio": 0.47, "median_ms": 4.7, "reference_ms": 10.0, "rounds": [0.47, 0.471, 0.469]}
    stub = lambda *a, **k: dict(timing)  # noqa: E731
    monkeypatch.setattr(L, "paired_latency", stub)
    monkeypatch.setattr(P, "paired_latency", stub)
    loaded = SimpleNamespace(model=SimpleNamespace(eval=lambda: "original"))
    monkeypatch.setattr(lcp.run.load, "load_model_and_data", lambda *a, **k: loaded)
    monkeypatch.setattr(lcp, "build_graph", lambda *a, **k: "graph")

    def prune_graph(graph, **kw):  # the pruner's own lookup of the name, as lcp.cut.pruner.prune_graph does
        for _ in range(3):
            P.paired_latency("walk", "original", ln.SIZE, batch=64)
        return SimpleNamespace(model="cut", info={"timings": 3})

    monkeypatch.setattr(ln, "prune_graph", prune_graph)
    ln.repeat_cut()
    out = capsys.readouterr().out
    assert out.count("cut timing:") == 3 and out.count("retime ratio") == 4
    assert P.paired_latency is stub and L.paired_latency is stub  # put back

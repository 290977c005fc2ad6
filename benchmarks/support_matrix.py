"""Support matrix: ``lcp.check`` (a 50% MACs cut, built and verified) over the CNN-like models of timm.

Every model is built with random weights (seed 0) and its default number of classes, and checked at input
3x64x64; a model that does not run at 64x64 (too small, or a fixed input size) is retried at its
``pretrained_cfg`` input size. Each model runs in a worker process with one intra-op thread and a time cap
(``--timeout``, default 60 s): a model over the cap is killed and marked ``timeout``. Models with more than
``--max-params`` parameters (default 400M) are not built (``skipped``): several copies of them (float64
verification, surgery) would not fit in the memory of a small machine.

Default list (``--models`` overrides it): every model of the installed timm that is CNN-like, meaning it has
an ``nn.Conv2d`` and no token-mixing module (attention, MLP-mixer, recurrent or state-space blocks; see
``lcp.models.timm_support.is_cnn_like``). The rule is applied to every ``timm.list_models()`` entry built on the meta
device (no memory, no weights); the list is cached in ``benchmarks/results/timm_cnn_models.json`` per timm
version.

Outputs ``benchmarks/results/support_matrix.csv`` (model, family, status ok/refused/error/timeout/skipped,
reason, macs_ratio, seconds, input, units, prunable, frozen_ops, params, suggestion); rows are appended as
models finish, and ``--resume`` skips models already in the CSV. Beside it, ``support_matrix.json`` (the CSV's name
with ``.json``) records the run (timm version, settings, date, command, wall time) and its re-runs (``redos``);
``--resume`` keeps the run's date and command and adds its own wall time. ``--redo`` replaces each model's row only
when its new row comes; the models not yet redone are kept in the JSON (``redo_pending``), so the same ``--redo``
run again after an interruption goes on with them. ``--markdown docs/support.md`` writes the documentation page from
the CSV (no models are run).

    python benchmarks/support_matrix.py                        # every CNN-like timm model (about 40 min, 2 cores)
    python benchmarks/support_matrix.py --every 3              # a sample: every 3rd model of the list
    python benchmarks/support_matrix.py --models resnet18,dla34 --out /tmp/m.csv
    python benchmarks/support_matrix.py --markdown docs/support.md

``--torchvision``: torchvision's classification, detection and segmentation models instead (``tv:NAME``, random
weights, no backbone weights), into ``benchmarks/results/support_matrix_torchvision.csv``; detectors are built
to resize their images to 128 px (``min_size``/``max_size`` where the builder takes them) and, since torch.fx
cannot trace them whole, are pruned by their traceable parts (``lcp.cut.parts``; the ``parts`` column).

    python benchmarks/support_matrix.py --torchvision
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import platform
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from lcp.io import atomic_path, atomic_write_json, read_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COLUMNS = [
    "model",
    "family",
    "status",
    "reason",
    "macs_ratio",
    "seconds",
    "input",
    "units",
    "prunable",
    "frozen_ops",
    "params",
    "suggestion",
    "parts",
]
STATUSES = ("ok", "refused", "error", "timeout", "skipped")
TV_OUT = RESULTS / "support_matrix_torchvision.csv"
SMALL_INPUT = 64
MAX_WORKER_RSS = 3 << 30  # a worker that grew past 3 GiB is replaced by a fresh one after its model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="", help="comma-separated timm names (default: every CNN-like timm model)")
    p.add_argument(
        "--torchvision",
        action="store_true",
        help="torchvision's classification, detection and segmentation models (tv:NAME) instead of timm's; "
        f"--out defaults to {TV_OUT.relative_to(ROOT)}",
    )
    p.add_argument("--every", type=int, default=1, help="run every N-th model of the list (a sample; default 1)")
    p.add_argument("--out", type=Path, default=None, help="CSV to write (default: results/support_matrix.csv)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per model before it is killed (default 60)")
    p.add_argument("--workers", type=int, default=2, help="worker processes, one thread each (default 2)")
    p.add_argument("--budget", type=float, default=0.5, help="fraction of MACs kept (default 0.5)")
    p.add_argument("--input", type=int, default=SMALL_INPUT, help="input height and width tried first (default 64)")
    p.add_argument("--max-params", type=float, default=400e6, help="skip models with more parameters (default 400M)")
    p.add_argument(
        "--suggest",
        type=float,
        default=0.0,
        help="seconds to search --ignore patterns for a failing model (default 0: no search)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows already in --out and run the others (the run's date, command and re-runs are kept; "
        "with no model left, nothing changes)",
    )
    p.add_argument(
        "--redo",
        default="",
        help="re-run the models of --out with these statuses or names (comma-separated, "
        "e.g. refused,timeout or efficientnet_cc_b0_4e) and replace their rows, each as its new row comes; the "
        "other rows are kept; the same --redo again after an interruption goes on with the models left",
    )
    p.add_argument("--markdown", type=Path, help="write this markdown page from --out (runs no model)")
    p.add_argument("--command", default="", help="the command line to quote in the markdown page")
    p.add_argument(
        "--large",
        type=Path,
        default=RESULTS / "support_matrix_large.csv",
        help="rows of models re-run elsewhere (skipped or timed out here) that --markdown merges in",
    )
    args = p.parse_args(argv)
    if args.out is None:
        args.out = TV_OUT if args.torchvision and not args.markdown else RESULTS / "support_matrix.csv"
    return args


# ---------------------------------------------------------------------------------------------- model list


def torchvision_models() -> dict[str, str]:
    """``tv:NAME`` -> task (classification, detection, segmentation) of every model torchvision lists."""
    import torchvision.models.detection
    import torchvision.models.segmentation

    tv = torchvision.models
    tasks = {"classification": tv, "detection": tv.detection, "segmentation": tv.segmentation}
    out: dict[str, str] = {}
    for task, module in tasks.items():
        for n in tv.list_models(module=module):
            out.setdefault(f"tv:{n}", task)
    return out


def family(name: str) -> str:
    """timm's module of a model (resnet, efficientnet, byobnet, ...); torchvision's task of a ``tv:`` model."""
    if name.startswith("tv:"):
        return "torchvision " + torchvision_models().get(name, "?")
    from timm.models._registry import _model_to_module

    return _model_to_module.get(name, "")


def _classify(name: str) -> tuple[str, bool, str, int]:
    import warnings

    import timm
    import torch

    from lcp.models.timm_support import is_cnn_like

    warnings.filterwarnings("ignore")
    try:
        with torch.device("meta"):
            m = timm.create_model(name)
        ok, why = is_cnn_like(m)
        return name, ok, why, sum(p.numel() for p in m.parameters())
    except Exception as e:  # cannot even be built: not in the matrix
        return name, False, f"cannot build ({type(e).__name__})", 0


def cnn_models(workers: int) -> dict[str, int]:
    """CNN-like timm models -> parameter count (cached per timm version)."""
    import timm

    cache = RESULTS / "timm_cnn_models.json"
    if cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("timm") == timm.__version__:
            return data["cnn"]
    names = [n for n in timm.list_models() if not n.startswith("lcp_")]
    print(f"classifying {len(names)} timm models on the meta device ...", flush=True)
    with mp.get_context("spawn").Pool(workers, initializer=_one_thread) as pool:
        rows = pool.map(_classify, names, chunksize=8)
    cnn = {n: int(p) for n, ok, _, p in rows if ok}
    other = {n: why for n, ok, why, _ in rows if not ok}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cache, {"timm": timm.__version__, "cnn": cnn, "not_cnn": other})
    return cnn


# ------------------------------------------------------------------------------------------------- workers


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def check_one(name: str, budget: float, size: int, suggest: float) -> dict[str, Any]:
    """Build ``name`` (random weights, seed 0) and ``lcp.check`` it at ``size``, else at its own input size."""
    import warnings

    import timm
    import torch

    from lcp.cut.diagnose import check

    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    torch.manual_seed(0)
    if name.startswith("tv:"):
        model, own, fixed = _torchvision_model(name)
    else:
        model = timm.create_model(name)
        cfg = model.pretrained_cfg or {}
        own, fixed = tuple(cfg.get("input_size", (3, 224, 224))), cfg.get("fixed_input_size")
    sizes = [own] if fixed else [(own[0], size, size), own]
    for s in dict.fromkeys(sizes):
        rep = check(model, torch.randn(1, *s), budget=budget, name=name, suggest=suggest > 0, suggest_seconds=suggest)
        small_failed = rep.status != "ok" and "does not run on the example input" in rep.reason
        if not small_failed:
            break
    row = rep.row()
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _torchvision_model(name: str) -> tuple[Any, tuple[int, ...], bool]:
    """A torchvision model with random weights, its own input size and whether that size is fixed; detectors
    resize their images to 128 px where their builder allows it."""
    import inspect

    import torchvision

    from lcp.errors import LcpError
    from lcp.models.factory import create_model

    builder = torchvision.models.get_model_builder(name[3:])
    accepts = inspect.signature(builder).parameters
    kw = (
        {"min_size": 128, "max_size": 128}
        if "weights_backbone" in accepts and family(name).endswith("detection")
        else {}
    )
    try:
        model = create_model(name, **kw)
    except LcpError as e:  # a builder that does not pass these on (SSD's fixed size): create_model says so
        if not kw or "min_size" not in str(e):
            raise
        model = create_model(name)
    fixed = name[3:].startswith(("vit_", "swin_", "maxvit_", "inception", "googlenet"))
    return model, (3, 224, 224), fixed


def _worker(conn: Any, budget: float, size: int, suggest: float) -> None:
    _one_thread()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # torch's shape propagation prints tracebacks of models that fail at 64x64
    while True:
        name = conn.recv()
        if name is None:
            return
        try:
            row = check_one(name, budget, size, suggest)
        except Exception as e:  # building failed: timm's problem, still a row
            row = {
                "model": name,
                "status": "error",
                "reason": f"building failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            }
        row["_retire"] = _rss_bytes() > MAX_WORKER_RSS  # freed models stay in the heap: start afresh
        conn.send(row)
        if row["_retire"]:
            return


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class Worker:
    """One process that checks models one at a time; killed and replaced when a model runs over time."""

    def __init__(self, ctx: Any, args: argparse.Namespace):
        self.ctx, self.args = ctx, args
        self.name: str | None = None
        self.started = 0.0
        self._spawn()

    def _spawn(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(
            target=_worker, args=(child, self.args.budget, self.args.input, self.args.suggest), daemon=True
        )
        self.proc.start()

    def submit(self, name: str) -> None:
        self.name, self.started = name, time.perf_counter()
        self.conn.send(name)

    def poll(self) -> dict | None:
        """The finished row, a timeout row, or None while the model is still running."""
        if self.name is None:
            return None
        elapsed = time.perf_counter() - self.started
        if self.conn.poll():
            try:
                row = self.conn.recv()
            except (EOFError, OSError):  # the worker died (killed for memory, ...)
                row = None
            if row is not None:
                self.name = None
                if row.pop("_retire", False):  # the worker exits after this reply: replace it now
                    self.proc.join()
                    self._spawn()
                return row
        if not self.proc.is_alive() or elapsed > self.args.timeout:
            died = self.proc.is_alive() is False
            code = self.proc.exitcode
            self.proc.kill()
            self.proc.join()
            row = {
                "model": self.name,
                "status": "timeout" if not died else "error",
                "reason": f"over {self.args.timeout:g} s"
                if not died
                else f"worker died (exit code {code}; out of memory?)",
                "seconds": round(elapsed, 1),
            }
            self.name = None
            self._spawn()
            return row
        return None

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def replace_row(path: Path, row: dict) -> None:
    """Put ``row`` at the end of the CSV at ``path`` in place of the row of the same model (rewritten atomically)."""
    rows = [r for r in read_rows(path) if r["model"] != row["model"]]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows([*rows, row])


def _redos(meta: dict) -> list[dict]:
    """The re-runs (``--redo``) recorded in a run's metadata, oldest first (older files hold one, as ``redo``)."""
    return list(meta.get("redos") or ([meta["redo"]] if meta.get("redo") else []))


def redo_sentences(meta: dict) -> list[str]:
    """One sentence per re-run recorded in ``meta``: which models, when, how long, the command."""
    out = []
    for redo in _redos(meta):
        which = " or ".join(redo.get("statuses") or [])
        named = ", ".join(redo.get("names") or [])
        what = f"that were {which} in that run" + (f" and {named}" if named else "") if which else f"({named})"
        out.append(
            f"After an engine change, the {redo['models']} model{'s' * (int(redo['models']) != 1)} {what} "
            f"{'were' if int(redo['models']) != 1 else 'was'} run again on {redo['cpus']} cores "
            f"({redo['date']}, {float(redo['wall_s']) / 60:.1f} min, `{redo['command']}`); their rows replace the "
            "old ones, the other rows are the full run's."
        )
    return out


def run(args: argparse.Namespace) -> int:
    import timm

    params: dict[str, int] = {}
    if args.redo:
        names = []  # the models come from --out (below)
    elif args.models:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
    elif args.torchvision:
        names = sorted(torchvision_models())
    else:
        params = cnn_models(args.workers)
        names = sorted(params)
    names = names[:: max(1, args.every)]
    meta_path = args.out.with_suffix(".json")
    old = read_json(meta_path, "the run's metadata") if meta_path.is_file() else {}
    pending = old.get("redo_pending")
    command = "python benchmarks/support_matrix.py " + " ".join(sys.argv[1:])
    redo = {s for s in args.redo.split(",") if s}
    spec = {"statuses": sorted(redo & set(STATUSES)), "names": sorted(redo - set(STATUSES))}
    if pending and redo and spec != {k: pending.get(k, []) for k in spec}:
        print(
            f"{meta_path} records an interrupted `{pending['command']}` with {len(pending['left'])} models left: "
            "run it again to finish it before another --redo",
            file=sys.stderr,
        )
        return 2
    if pending and args.resume and not redo:
        print(f"note: an interrupted `{pending['command']}` has {len(pending['left'])} models left (run it again)")
    # a redo replaces each model's row as its new row comes (at the end of the CSV); the models still to do are
    # kept in the metadata's ``redo_pending``, so the same --redo run again after an interruption continues
    if redo:
        rows = read_rows(args.out)
        names = list(pending["left"]) if pending else [r["model"] for r in rows if {r["status"], r["model"]} & redo]
        params = {r["model"]: int(r["params"]) for r in rows if r.get("params")}  # kept as counted
    done = {r["model"]: r for r in read_rows(args.out)} if args.resume and not redo else {}
    todo = [n for n in names if n not in done]
    if (args.resume or redo) and not todo:
        print(f"no model to redo in {args.out}" if redo else f"nothing to run: every model is in {args.out}")
        return 0  # the CSV and its metadata stay as they are

    # the metadata (--out with .json) is written now, after every row and at the end, so that it always belongs
    # to the rows of --out: a fresh run starts it afresh; a --resume keeps the run's date, command and re-runs and
    # adds its wall time (the invocation is listed in ``resumes``); a --redo adds an entry to ``redos``
    fresh = {
        "timm": timm.__version__,
        "wall_s": 0.0,
        "workers": args.workers,
        "timeout": args.timeout,
        "every": args.every,
        "input": args.input,
        "budget": args.budget,
        "models_listed": len(names),
        "cpus": os.cpu_count(),
        "timm_models": len([n for n in timm.list_models() if not n.startswith("lcp_")]),
        "max_params": args.max_params,
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
    }
    this = {"date": fresh["date"], "command": command, "models": len(todo), "wall_s": 0.0}
    if redo:
        earlier = _redos(old)  # shown on the page while this one runs, too
        meta = {k: v for k, v in (old or fresh).items() if k not in ("redo", "redos", "redo_pending")}
        meta.update({"redos": earlier} if earlier else {})
        entry = pending or {
            **spec,
            "models": len(todo),
            "wall_s": 0.0,
            "timm": timm.__version__,
            "cpus": os.cpu_count(),
            "workers": args.workers,
            "date": fresh["date"],
            "command": command,
            "left": list(todo),
        }
        wall0 = float(entry.get("wall_s", 0))
    elif args.resume and done and old:
        meta = dict(old)
        meta["resumes"] = [*old.get("resumes", []), this]
        wall0 = float(old.get("wall_s", 0))
    else:
        meta, wall0 = fresh, 0.0
    left = list(entry["left"]) if redo else []

    def save_meta() -> None:
        wall = round(wall0 + time.perf_counter() - t0, 1)
        this["wall_s"] = round(time.perf_counter() - t0, 1)
        if redo:
            entry.update(wall_s=wall, left=list(left))
            if left:
                meta["redo_pending"] = entry
            else:  # every model done: the re-run joins the earlier ones
                meta.pop("redo_pending", None)
                meta["redos"] = [*earlier, {k: v for k, v in entry.items() if k != "left"}]
        else:
            meta["wall_s"] = wall
        atomic_write_json(meta_path, meta)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    fh = None if redo else open(args.out, "a" if done else "w", newline="")
    writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore") if fh else None
    if writer and not done:
        writer.writeheader()
        fh.flush()

    def emit(row: dict) -> None:
        row["family"] = family(row["model"])
        row.setdefault("params", params.get(row["model"], ""))
        line = {k: row.get(k, "") for k in COLUMNS}
        if redo:  # the old row stays until this one replaces it
            replace_row(args.out, line)
            if row["model"] in left:
                left.remove(row["model"])
        else:
            writer.writerow(line)
            fh.flush()
        save_meta()
        counts[row["status"]] += 1
        n = sum(counts.values())
        print(
            f"[{n}/{len(todo)} {time.perf_counter() - t0:6.0f}s] {row['model']:<36} {row['status']:<8} "
            f"{row.get('seconds', '')!s:>6}s {str(row.get('reason', ''))[:90]}",
            flush=True,
        )

    counts: Counter = Counter()
    t0 = time.perf_counter()
    workers: list[Worker] = []
    try:
        save_meta()
        queue = []
        for n in todo:
            if params.get(n, 0) > args.max_params:
                emit(
                    {
                        "model": n,
                        "status": "skipped",
                        "reason": f"{params[n] / 1e6:.0f}M parameters, over --max-params {args.max_params / 1e6:.0f}M",
                        "seconds": 0,
                    }
                )
            else:
                queue.append(n)
        import lcp.cut.diagnose  # noqa: F401  (imported once here: forked workers start without importing it again)

        ctx = mp.get_context("fork")
        workers = [Worker(ctx, args) for _ in range(max(1, args.workers))]
        while queue or any(w.name for w in workers):
            for w in workers:
                row = w.poll()
                if row is not None:
                    emit(row)
                if w.name is None and queue:
                    w.submit(queue.pop(0))
            time.sleep(0.05)
    finally:
        for w in workers:
            w.close()
        if fh:
            fh.close()
        save_meta()  # an interrupted run too: its wall time so far, and the models a redo has left
    total = time.perf_counter() - t0
    print(f"{len(todo)} models in {total:.0f} s: " + ", ".join(f"{k} {counts[k]}" for k in STATUSES if counts[k]))
    return 0


# ------------------------------------------------------------------------------------------------ markdown


def _reason_kind(row: dict) -> str:
    """A short category of a refusal or error, for the summary."""
    r = row["reason"]
    rules = [
        ("nothing prunable", r"nothing in this model can be pruned"),
        ("budget out of reach (too much frozen)", r"budget|lowest reachable|cannot reach"),
        ("verification failed (caught, not returned)", r"does not match the masked original|plan said"),
        ("does not trace with torch.fx", r"cannot trace"),
        ("does not run on the example input", r"does not run on the example input"),
        ("train-mode forward/backward failed", r"output shape|gradient"),
        ("over the time cap", r"^over "),
        ("too large for this run", r"max-params"),
    ]
    for label, pat in rules:
        if re.search(pat, r):
            return label
    return "other"


LIMITS_SECTION = """What lcp does where a model normalizes over several channels:

- **Weight-standardized convolutions** (`StdConv2d`, `ScaledStdConv2d`: NFNet, NF-ResNet, NF-RegNet, BiT
  ResNetV2) standardize each filter over its inputs in `forward`, so removing an input would change every
  filter. lcp folds the standardization into a plain conv (the standardized weight, frozen; the per-filter
  gain multiplied in) when it builds the pruned network: exact, verified like every cut; fine-tuning then
  trains plain weights. The reported params count the folded network (the gains are gone).
- **GroupNorm** (`nn.GroupNorm`, timm's `GroupNorm`/`GroupNormAct`): statistics are per group, so lcp removes
  whole groups (a group's channels are one unit; `num_groups` is rewritten). GroupNorm with one group is
  LayerNorm over the channels and freezes them.

The refusals left come from three causes, each found by `lcp check` and named in its output:

- **Normalization across channels**: EvoNorm, LayerNorm over the channels (ConvNeXt's residual stream),
  ConvNeXt-V2's global response norm (a mean over channels). Removing a channel changes the statistics of the
  others.
- **Coupled groups too coarse for the budget**: EfficientNet `*_g8_gn` couples GroupNorm groups of 8 with grouped
  convs of 8 channels per group (the same positions removed in every conv group), so channels go in large coupled
  units and the 10% floors of the groups stop the cut above 0.5 of the MACs (the table gives the lowest reachable,
  0.59 and 0.65); a budget above it prunes and verifies.
- **Per-channel parameters used in forward code** (FilterResponseNorm's `tau`, EvoNorm, layer scale): lcp
  freezes the channels they touch rather than slicing the parameter.

`--ignore` cannot help these (it keeps more layers whole); `lcp check --model NAME` lists the ops and where
they are. A model that fails for another reason gets, from `lcp check`, the `--ignore` patterns that make it
prune (found by retrying with blocks kept whole, coarse to fine).
"""

TIMM_SECTION = """## Pruned timm models: data, timm's scripts, features

**Prune on your own data.** `--data` takes an ImageFolder root (`train/` and `val/` or `test/`, one folder per
class). For timm models the images go through timm's eval transform of the model's `pretrained_cfg`
(`timm.data.create_transform`: resize, center crop at `crop_pct`, interpolation; mean and std for
normalization) at the model's input size, or at `--input-size C H W`. `--pretrained` starts from the hub's
weights (online; the classifier is re-initialised when your number of classes differs), `--checkpoint FILE`
from a local state dict. The classifier always keeps its number of classes (its output channels are never
pruned).

```bash
lcp check --model resnet50                                  # can it prune? what is frozen, and why
lcp prune --model resnet50 --pretrained --data ~/data/imagenette --budget 0.5 --method global --out runs/r50
python -c "import lcp; print(lcp.load('runs/r50'))"         # rebuilt from channels.json, no pickle
```

**timm's `train.py` and `validate.py`** (from a clone of
[pytorch-image-models](https://github.com/huggingface/pytorch-image-models); they are not in the pip
package). `lcp.models.timm_hub` registers a timm model entry `lcp_<arch>` for every timm architecture; it rebuilds
the pruned model from the output folder (`channels.json` + `model.safetensors`). Run the scripts through
`python -m lcp.models.timm_hub`, which registers the entries first:

```bash
python -m lcp.models.timm_hub validate.py --data-dir ~/data/imagenette --model lcp_resnet50 \\
    --model-kwargs pruned_dir=runs/r50
python -m lcp.models.timm_hub train.py --data-dir ~/data/imagenette --model lcp_resnet50 \\
    --model-kwargs pruned_dir=runs/r50 --epochs 10 --lr 0.01 --warmup-epochs 0
# lcp writes timm's config.json into the folder, so timm's local-dir source works too:
python -m lcp.models.timm_hub validate.py --data-dir ~/data/imagenette --model local-dir:runs/r50
```

The pruned weights are always loaded (`--pretrained` changes nothing); `--num-classes N` puts a new classifier
on the pruned features; `--initial-checkpoint` / `--checkpoint` / `--resume` load checkpoints of the pruned model
as usual; `--drop`, `--drop-path` and the other model arguments reach the original model before the cut.
`tests/models/test_timm_support.py` follows train.py's and validate.py's steps with a pruned model
(`timm.utils.ParseKwargs`,
`timm.create_model` with train.py's arguments, data config and transforms from `pretrained_cfg`, timm's dataset,
loader and optimizer, a checkpoint saved and loaded back) and runs a script through the runner. By hand, a copy
of validate.py (its model creation, data pipeline and evaluation loop unchanged; AMP, scripting and bulk mode
cut) ran through the runner with both `--model` forms; train.py was not run, the scripts are not installable
offline.

In Python:

```python
import timm, lcp.models.timm_hub
lcp.models.timm_hub.register_all()
model = timm.create_model("lcp_resnet50", pruned_dir="runs/r50")          # or "local-dir:runs/r50"
feats = timm.create_model("lcp_resnet50", pruned_dir="runs/r50", features_only=True, out_indices=(2, 3, 4))
print(feats.feature_info.channels())                                       # the pruned widths
```

**forward_features and features_only.** A pruned model is timm's own class (all its methods work, and
`num_features`, `head_hidden_size` and `feature_info` give the pruned widths, so `reset_classifier` fits) unless
lcp had to rewrite constants of its forward code (split sizes or channel slices: of the 20 models of
`tests/models/test_timm_support.py`, ghostnet_100, mixnet_s, cspresnet50, res2net50_14w_8s and dpn48b); then it is a
`torch.fx.GraphModule` with timm's attributes (`num_classes`,
`pretrained_cfg`, ...) but not its methods. `features_only=True` wraps the pruned model in the architecture's
own timm feature wrapper (`FeatureListNet`, `FeatureGetterNet` via `forward_intermediates`, ...) with the pruned
channel counts; for a GraphModule it is refused with the reason (use forward hooks on its modules).
"""


def _summary_row(label: str, rows: list[dict]) -> str:
    n = len(rows)
    c = Counter(r["status"] for r in rows)
    cell = lambda k: f"{c[k]} ({100 * c[k] / n:.1f}%)" if c[k] else "0"  # noqa: E731
    return f"| {label} | {n} | " + " | ".join(cell(k) for k in STATUSES) + " |"


def torchvision_section(rows: list[dict], meta: dict) -> list[str]:
    """The page's section on torchvision's models (``--torchvision``), by task, every model listed."""
    out = [
        "## torchvision's classification, detection and segmentation models",
        "",
        f"`{meta.get('command', 'python benchmarks/support_matrix.py --torchvision')}` "
        f"({meta.get('date', '?')}, {meta.get('cpus', '?')} cores, torchvision's models as `tv:NAME`, random weights, "
        "no backbone weights): the same check as above at input 3x64x64, or 3x224x224 when a model does not run "
        "at 64 px or has a fixed size. The detectors resize their images to 128 px where their builder allows it "
        "(`min_size`/`max_size`; SSD and SSDlite have a fixed size). torch.fx cannot trace a detector whole (its "
        "list of images, anchors, box decoding), so lcp prunes its traceable parts in place (`lcp.cut.parts`): "
        "each part keeps the budget's share of its own MACs and is verified on the inputs it was called with, "
        "and the whole pruned detector is run; the MACs ratio is that of the parts.",
        "",
        *(x for line in redo_sentences(meta) for x in (line, "")),
        "| task | models | ok | refused | error | timeout |",
        "|---|---|---|---|---|---|",
    ]
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_task[r["family"]].append(r)
    for task, rs in sorted(by_task.items()):
        c = Counter(r["status"] for r in rs)
        out.append(
            f"| {task.replace('torchvision ', '')} | {len(rs)} | {c['ok']} | {c['refused'] or ''} | "
            f"{c['error'] or ''} | {c['timeout'] or ''} |"
        )
    out += ["", "| model | task | status | MACs kept | parts pruned (detectors) or reason |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["family"], r["model"])):
        what = r.get("parts", "") if r["status"] == "ok" else r["reason"].replace("|", "\\|")[:200]
        ratio = f"{float(r['macs_ratio']):.3f}" if r.get("macs_ratio") else ""
        out.append(f"| {r['model']} | {r['family'].replace('torchvision ', '')} | {r['status']} | {ratio} | {what} |")
    out.append("")
    return out


def markdown(args: argparse.Namespace) -> int:
    local = read_rows(args.out)
    if not local:
        print(f"no rows in {args.out}: run the matrix first", file=sys.stderr)
        return 2
    meta_path = args.out.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    large = read_rows(args.large) if args.large and args.large.is_file() else []
    large_meta = {}
    for f in sorted(args.large.parent.glob(args.large.stem + "*.json")) if large else []:
        large_meta = json.loads(f.read_text())
    by_model = {r["model"]: r for r in local}
    by_model.update({r["model"]: {**r, "where": "large"} for r in large if r["model"] in by_model})
    rows = list(by_model.values())
    n = len(rows)
    ratios = [float(r["macs_ratio"]) for r in rows if r["status"] == "ok" and r["macs_ratio"]]
    every = meta.get("every", 1)
    sample = every > 1 or "--models" in meta.get("command", "")
    cmd = args.command or meta.get("command") or "python benchmarks/support_matrix.py"
    out: list[str] = []
    w = out.append
    w("# Which models prune: the support matrix")
    w("")
    w(
        "Generated by `python benchmarks/support_matrix.py --markdown docs/support.md` from "
        "`benchmarks/results/support_matrix.csv` (and `support_matrix_large.csv`); do not edit by hand."
    )
    w("")
    w(
        "Every model is built with random weights and its default classifier, and `lcp.check` plans a cut to 50% "
        "of its MACs (global ranking, any channel width: `lcp prune` then keeps widths in multiples of 16), "
        "builds the pruned network and verifies it: outputs equal to the masked "
        "original in float64, MACs and params re-counted, one forward and backward pass in train mode. This is "
        "what `lcp check --model NAME` does. Input 3x64x64, or the model's own input size when it does not run "
        "at 64x64 (fixed-size heads such as Inception's). One thread per model, a time cap per model. "
        "*refused* means lcp declined with the reason below and returned nothing; *error* would be an lcp bug."
    )
    w("")
    w(
        "**Which models**: every timm model that is *CNN-like*: it has an `nn.Conv2d` and no token-mixing module "
        "(a class named like attention: `Attention`, `Attn`, except ResNeSt's `SplitAttn` and SKNet's "
        "`SelectiveKernelAttn` channel gates; MLP-Mixer, gMLP and ResMLP blocks; LSTM/GRU; lambda layers; "
        "EfficientViT's `LiteMLA`, SHViT's `SHSA`, iFormer's `SHMA`, EfficientViM's `HSMSSD`, ConViT's "
        "`GPSA`/`MHSA`, ViT parallel blocks). The rule is `lcp.models.timm_support.is_cnn_like`, applied to every "
        "`timm.list_models()` entry built on the meta device "
        f"({meta.get('models_listed', n) * max(1, every)} of the {meta.get('timm_models', 'installed')} models "
        f"of timm {meta.get('timm', '?')})."
    )
    w("")
    if sample:
        w(
            f"> **This is a sample** (every {every}th model of the list). The full matrix: "
            "`python benchmarks/support_matrix.py`, then `--markdown docs/support.md`."
        )
        w("")
    w("## Summary")
    w("")
    w("| run | models | ok (50% MACs, verified) | refused (reason given) | error (lcp bug) | timeout | skipped |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    w(
        _summary_row(
            f"{meta.get('cpus', '?')} CPU cores, {meta.get('workers', '?')} workers, "
            f"{meta.get('timeout', '?'):g} s cap, {float(meta.get('wall_s', 0)) / 60:.0f} min",
            local,
        )
    )
    if large:
        w(
            _summary_row(
                f"the skipped and timed-out models again on {large_meta.get('cpus', '?')} cores, "
                f"128 GB, {large_meta.get('timeout', '?'):g} s cap (timm {large_meta.get('timm', '?')})",
                [r for r in rows if r.get("where") == "large"],
            )
        )
        w(_summary_row("**all models**", rows))
    w("")
    w(
        f"timm {meta.get('timm', '?')}, {meta.get('date', '?')}. On 2 cores, models over "
        f"{meta.get('max_params', 400e6) / 1e6:.0f}M parameters are skipped: several float64 copies of them "
        "(verification) do not fit in the memory of a small machine."
    )
    for line in redo_sentences(meta):
        w("")
        w(line)
    for large_redo in _redos(large_meta) if large else []:
        which = " and ".join(large_redo.get("statuses") or [])
        named = ", ".join(large_redo.get("names") or [])
        what = f"{which} rows" + (f" and the rows of {named}" if named else "") if which else f"rows of {named}"
        w(f"The large run's {what} likewise ({large_redo['date']}, `{large_redo['command']}`).")
    w("")
    if ratios:
        w(
            f"MACs ratio reached by the models that prune: {min(ratios):.4f} to {max(ratios):.4f} (target 0.5: "
            "the cut lands just under it). No model is returned broken: a pruned network that fails "
            "verification is refused, never returned."
        )
        w("")
    w("Commands:")
    w("")
    w("```bash")
    w(f"{cmd}    # the matrix: CSV rows as models finish")
    w("python benchmarks/support_matrix.py --markdown docs/support.md    # this page")
    w("```")
    w("")
    kinds = Counter(_reason_kind(r) for r in rows if r["status"] != "ok")
    if kinds:
        w("What stops the others (all of them engine limitations that lcp reports, none an error):")
        w("")
        w("| reason | models |")
        w("|---|---:|")
        for k, c in kinds.most_common():
            w(f"| {k} | {c} |")
        w("")
        w(LIMITS_SECTION)
    w("## Per family (timm module)")
    w("")
    w("| family | models | ok | refused | error | timeout | skipped |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    fam: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        fam[r["family"] or "?"][r["status"]] += 1
    for f, c in sorted(fam.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])):
        w(
            f"| {f} | {sum(c.values())} | {c['ok']} | {c['refused'] or ''} | {c['error'] or ''} | "
            f"{c['timeout'] or ''} | {c['skipped'] or ''} |"
        )
    w("")
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        w("## Models that do not prune, and why")
        w("")
        w("| model | status | reason |")
        w("|---|---|---|")
        for r in sorted(bad, key=lambda r: (STATUSES.index(r["status"]) if r["status"] in STATUSES else 9, r["model"])):
            reason = r["reason"].replace("|", "\\|")
            reason = reason if len(reason) <= 240 else reason[:237] + "..."
            sug = r.get("suggestion", "")
            if sug:
                reason += " (prunes with " + " ".join(f"`--ignore '{p}'`" for p in sug.split()) + ")"
            w(f"| {r['model']} | {r['status']}{' (large run)' if r.get('where') == 'large' else ''} | {reason} |")
        w("")
    tv_rows = read_rows(TV_OUT) if TV_OUT.is_file() else []
    if tv_rows:
        out.extend(torchvision_section(tv_rows, json.loads(TV_OUT.with_suffix(".json").read_text())))
    w(TIMM_SECTION)
    w("## Reproduce one row")
    w("")
    w("```bash")
    w("lcp check --model resnet50 --input-size 3 64 64     # 'ok', exit code 0")
    w("lcp check --model efficientnet_b0_g8_gn --input-size 3 64 64     # 'refused' with the reason, exit code 2")
    w("```")
    w("")
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text("\n".join(out))
    print(f"wrote {args.markdown} from {n} rows")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        return markdown(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

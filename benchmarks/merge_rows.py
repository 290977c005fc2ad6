"""Merge the rows of comparison CSVs written by parallel runs of ``benchmarks/compare.py`` (e.g. the chains of
``benchmarks/gpu_tables.sh``) into one table per budget, with the ceiling rows (budget 1) in each.

    python benchmarks/merge_rows.py --into benchmarks/results/compare_kd_resnet56_cuda.csv --budgets 0.5 \\
        OUT/csv/resnet56_c*.csv

Every input, and ``--into`` when it exists, must come from the same recipe signature (``config_hash``); the
meta files are merged: the first one's settings with the union of methods, seeds and the chosen budgets, and in
``runs`` each input invocation that finished a merged row (so the table's wall time and dates are its rows').
Rows already in ``--into`` are replaced by rows of the same method, budget and seed; merged into a table of other
budgets, the budgets are joined and the meta says the searches ran separately (``searched_separately``: one
search per budget, not one averaged over them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import append_row  # noqa: E402
from report import run_made_a_row  # noqa: E402

from lcp.io import update_json  # noqa: E402


def merge(inputs: list[Path], into: Path, budgets: list[float], command: str = "") -> int:
    """Copy the rows of ``inputs`` at ``budgets`` (and every ceiling row) into ``into``; return how many."""
    metas = [json.loads(p.with_suffix(".meta.json").read_text()) for p in inputs]
    hashes = {m["config_hash"] for m in metas}
    if len(hashes) > 1:
        raise SystemExit(f"error: the inputs come from different recipes (config hashes {sorted(hashes)})")
    target = into.with_suffix(".meta.json")
    if target.is_file() and json.loads(target.read_text()).get("config_hash") not in hashes:
        raise SystemExit(
            f"error: {into} holds rows of another recipe (config hash "
            f"{json.loads(target.read_text()).get('config_hash')}, the inputs' {sorted(hashes)[0]})"
        )
    frames = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in inputs]
    rows = pd.concat(frames, ignore_index=True)
    b = pd.to_numeric(rows["budget"])
    keep = rows[(rows["method"] == "ceiling") | b.apply(lambda v: any(abs(v - x) < 1e-9 for x in budgets))]
    for _, r in keep.iterrows():
        row = {k: v for k, v in r.items() if v != ""}
        for k in ("budget", "seed"):
            row[k] = float(row[k]) if k == "budget" else int(row[k])
        append_row(into, row)

    chosen = {float(x) for x in budgets}

    def combine(meta: dict) -> None:
        existing = bool(meta)
        if not existing:
            meta.update(dict(metas[0], runs=[]))
        cfg = meta["config"]
        cfg["methods"] = sorted(set(cfg.get("methods", [])) | set(keep["method"]))
        cfg["seeds"] = sorted({int(s) for s in cfg.get("seeds", [])} | {int(s) for s in keep["seed"]})
        wanted = set(chosen)
        if existing:  # rows at other budgets stay: their budgets too; each input's searches ran at its own budgets
            old = set(meta.get("search_budgets") or cfg.get("budgets", []))
            if old and old != wanted:
                meta["searched_separately"] = True
            wanted |= {float(b) for b in cfg.get("budgets", [])}
        cfg["budgets"] = sorted(wanted)
        meta["search_budgets"] = cfg["budgets"]
        host = meta.setdefault("host", {})
        for m in metas:  # e.g. the modelopt version, known only to the run from its own venv
            host.update({k: v for k, v in (m.get("host") or {}).items() if host.get(k) is None and v is not None})
        seen = {json.dumps(r, sort_keys=True) for r in meta["runs"]}
        for m in metas:
            runs = m.get("runs", [])
            meta["runs"] += [
                r
                for r in runs
                if json.dumps(r, sort_keys=True) not in seen
                and run_made_a_row(r, runs, keep, (m.get("config") or {}).get("out"))
            ]
        if command:
            meta["runs"].append({"command": command})

    update_json(into.with_suffix(".meta.json"), combine)  # under the lock compare.py's runs update it with
    return len(keep)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", type=Path, help="comparison CSVs (each with its .meta.json)")
    p.add_argument("--into", type=Path, required=True, help="the merged CSV (created or updated)")
    p.add_argument("--budgets", required=True, help="comma-separated budgets to keep, e.g. 0.5")
    args = p.parse_args(argv)
    shown = ["python benchmarks/merge_rows.py", f"--into {args.into}", f"--budgets {args.budgets}"]
    shown += [str(p) for p in args.inputs]
    n = merge(args.inputs, args.into, [float(x) for x in args.budgets.split(",")], " ".join(shown))
    print(f"{n} rows into {args.into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

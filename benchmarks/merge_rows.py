"""Merge the rows of comparison CSVs written by parallel runs of ``benchmarks/compare.py`` (e.g. the chains of
``benchmarks/gpu_tables.sh``) into one table per budget, with the ceiling rows (budget 1) in each.

    python benchmarks/merge_rows.py --into benchmarks/results/compare_kd_resnet56_cuda.csv --budgets 0.5 \\
        OUT/csv/resnet56_c*.csv

Every input, and ``--into`` when it exists, must come from the same recipe signature (``config_hash``); the
meta files are merged: the first one's settings with the union of methods, seeds and the chosen budgets, and in
``runs`` each input invocation that finished a merged row (so the table's wall time and dates are its rows').
Rows already in ``--into`` are replaced by rows of the same method, budget and seed, except that a row which
failed or was skipped never replaces a finished (``ok``) one. A merge is refused when finished rows were cut
from different baselines (``base_weights``, or ``top1_base`` in rows older than that column), or a method's were
made with other settings (their ``config`` signature, e.g. another number of agent episodes) or, for
``lcp``, another number of search candidates or, at one budget, searches fitted at other budgets: they would be
averaged as one. Merged into a table whose lcp
searches ran at other budgets, the meta says the searches ran separately (``searched_separately``: one search
per budget, not one averaged over them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import append_row, other_baselines  # noqa: E402
from report import run_made_a_row  # noqa: E402

from lcp.io import update_json  # noqa: E402

KEY = ("method", "budget", "seed")


def _key(r: pd.Series) -> tuple[str, float, int]:
    return str(r["method"]), round(float(r["budget"]), 6), int(r["seed"])


def _finished_first(rows: pd.DataFrame, old: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, budget, seed): a finished (``ok``) row before one that failed or was skipped, else
    the last input's; a row not ``ok`` is dropped (with a line on stderr) where ``old`` has that key ``ok``."""
    if rows.empty:
        return rows
    ok = rows["status"].eq("ok") if "status" in rows else pd.Series(True, index=rows.index)
    rows = rows.assign(_ok=ok.values, _order=range(len(rows))).sort_values(["_ok", "_order"], kind="stable")
    rows = rows.drop_duplicates(subset=list(KEY), keep="last").sort_values("_order")
    done = set() if old.empty or "status" not in old else {_key(r) for _, r in old[old["status"] == "ok"].iterrows()}
    dropped = [r for _, r in rows.iterrows() if not r["_ok"] and _key(r) in done]
    for r in dropped:
        print(
            f"kept the finished row of {r['method']} {r['budget']} seed {r['seed']}, not: {r['status']}",
            file=sys.stderr,
        )
    rows = rows[[not (not r["_ok"] and _key(r) in done) for _, r in rows.iterrows()]]
    return rows.drop(columns=["_ok", "_order"])


def _refuse_mixed(new: pd.DataFrame, old: pd.DataFrame, into: Path) -> None:
    """Refuse (SystemExit) a merge after which one method's finished rows carry two ``config`` signatures or, for
    lcp, two numbers of search candidates, or two sets of search budgets at one budget: the report would average
    them as one setting."""
    if not old.empty:
        replaced = {_key(r) for _, r in new.iterrows()}
        old = old[[_key(r) not in replaced for _, r in old.iterrows()]]
    both = pd.concat([old, new], ignore_index=True)
    if "status" in both:
        both = both[both["status"] == "ok"]
    kinds = other_baselines(both, None, None)
    if kinds:
        raise SystemExit(
            f"error: after this merge {into} would hold rows cut from more than one baseline ({', '.join(kinds)} "
            "beside another): a table's rows share one baseline (rerun them from one, or merge into another "
            "file)"
        )
    checks = (  # column, the methods it concerns (None: all), the rows averaged together
        ("config", None, ["method"]),
        ("search_candidates", {"lcp"}, ["method"]),
        ("search_budgets", {"lcp"}, ["method", "budget"]),  # e.g. "0.3;0.5": one search fitted at both
    )
    for column, methods, by in checks:
        if column not in both:
            continue
        for key, g in both.groupby(by):
            method = key[0] if isinstance(key, tuple) else key
            if methods and method not in methods:
                continue
            values = {str(v) for v in g[column] if str(v) not in ("", "nan")}
            if column == "search_candidates":  # 80 and 80.0 (a column with gaps) are one count
                values = {f"{float(v):g}" for v in values}
            values = sorted(values)
            if len(values) > 1:
                raise SystemExit(
                    f"error: after this merge {into} would hold {method} rows with {column} {', '.join(values)}: "
                    "rows of different settings would be averaged as one (rerun them alike, or merge into another "
                    "file)"
                )


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
    old = pd.read_csv(into, dtype=str, keep_default_na=False) if into.is_file() else pd.DataFrame()
    keep = _finished_first(keep, old)
    _refuse_mixed(keep, old, into)
    for _, r in keep.iterrows():
        row = {k: v for k, v in r.items() if v != ""}
        for k in ("budget", "seed"):
            row[k] = float(row[k]) if k == "budget" else int(row[k])
        append_row(into, row)

    pruned = keep[keep["method"] != "ceiling"]

    def fits(f: pd.DataFrame, m: dict) -> set[tuple[float, ...]]:
        """The budgets the merged lcp rows of one input were fitted at: a row's ``search_budgets`` cell, else its
        input's meta (each row's own budget where that meta says the searches ran separately)."""
        at = pd.to_numeric(f["budget"]).apply(lambda v: any(abs(v - x) < 1e-9 for x in budgets))
        ok = f["status"].eq("ok") if "status" in f else True
        out = set()
        for _, r in f[(f["method"] == "lcp") & at & ok].iterrows():
            if r.get("search_budgets", ""):
                out.add(tuple(sorted(float(x) for x in str(r["search_budgets"]).split(";"))))
            elif m.get("searched_separately") or not m.get("search_budgets"):
                out.add((float(r["budget"]),))
            else:
                out.add(tuple(sorted(float(x) for x in m["search_budgets"])))
        return out

    searched = set().union(*(fits(f, m) for f, m in zip(frames, metas)))

    def combine(meta: dict) -> None:
        existing = bool(meta)
        if not existing:
            meta.update(dict(metas[0], runs=[]))
            meta.pop("search_budgets", None)
            meta.pop("searched_separately", None)
        cfg = meta["config"]
        cfg["methods"] = sorted(set(cfg.get("methods", [])) | set(keep["method"]))
        cfg["seeds"] = sorted({int(s) for s in cfg.get("seeds", [])} | {int(s) for s in keep["seed"]})
        wanted = {float(x) for x in pruned["budget"]} | (
            {float(x) for x in cfg.get("budgets", [])} if existing else set()
        )
        cfg["budgets"] = sorted(wanted)
        fitted = set(searched)
        if existing and meta.get("search_budgets"):  # the table's own lcp rows
            had = sorted(float(x) for x in meta["search_budgets"])
            fitted |= {(b,) for b in had} if meta.get("searched_separately") else {tuple(had)}
        if len(fitted) > 1:  # searches fitted at different budgets: each row's at its own
            meta["searched_separately"] = True
        if fitted:
            meta["search_budgets"] = sorted({b for f in fitted for b in f})
        elif not existing:
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

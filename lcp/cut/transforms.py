"""Per-group affine compensation of filter scores (LcP/LeGR's ``alpha * score + kappa``) and its JSON file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lcp.engine.graph import ChannelGraph
from lcp.errors import LcpError


def scores_of(options: Any) -> dict[str, str]:
    """What filter scores are computed with (options with ``importance`` and ``aggregate``): a compensation
    learned on them fits only the same."""
    return {"importance": options.importance, "aggregate": options.aggregate}


@dataclass
class Transforms:
    """Per-group affine compensation ``alpha * score + kappa`` (identity by default)."""

    alpha: np.ndarray
    kappa: np.ndarray
    groups: list[str] = field(default_factory=list)
    #: what the scores were computed with ({"importance", "aggregate"}) when learned on them; None for identity
    learned_with: dict[str, str] | None = None

    @classmethod
    def identity(cls, graph: ChannelGraph) -> Transforms:
        n = len(graph.groups)
        return cls(np.ones(n), np.zeros(n), [g.name for g in graph.groups])

    def to_json(self) -> dict:
        data: dict = {
            "groups": [
                {"group": g, "alpha": float(a), "kappa": float(k)}
                for g, a, k in zip(self.groups, self.alpha, self.kappa)
            ]
        }
        if self.learned_with is not None:
            data["learned_with"] = dict(self.learned_with)
        return data

    @classmethod
    def from_json(cls, data: dict, graph: ChannelGraph) -> Transforms:
        try:
            rows = {r["group"]: (float(r["alpha"]), float(r["kappa"])) for r in data["groups"]}
        except (KeyError, TypeError, ValueError):
            raise LcpError(
                'transforms file is not lcp transforms JSON ({"groups": [{"group", "alpha", "kappa"}, ...]})'
            ) from None
        bad = [g for g, (a, k) in rows.items() if not (np.isfinite(a) and np.isfinite(k) and a > 0)]
        if bad:
            raise LcpError(
                f"transforms file has a non-finite or non-positive alpha, or a non-finite kappa, for group {bad[0]} "
                "(alpha must be a positive number, kappa a finite one)"
            )
        names = [g.name for g in graph.groups]
        missing = [n for n in names if n not in rows]
        if missing:
            raise LcpError(
                f"transforms file does not fit this model: no entry for {len(missing)} groups "
                f"({', '.join(missing[:3])}...); it was learned on another architecture"
            )
        made = data.get("learned_with")  # files written before 2026-12-06 do not say
        learned_with = {str(k): str(v) for k, v in made.items()} if isinstance(made, dict) else None
        return cls(np.array([rows[n][0] for n in names]), np.array([rows[n][1] for n in names]), names, learned_with)

    def check_scores(self, options: Any, source: str) -> None:
        """Refuse a compensation learned on other scores than ``options``' importance and aggregation: its
        alphas and kappas do not fit them. Transforms that do not say what they were learned on are accepted."""
        made, now = self.learned_with or {}, scores_of(options)
        other = {k: made[k] for k, v in now.items() if made.get(k, v) != v}
        if other:
            said = ", ".join(f"--{k} {v}" for k, v in other.items())
            raise LcpError(
                f"{source} was learned on scores of {said}: its compensation does not fit other scores; pass the "
                "same options or search again"
            )

"""The search's state (history, best, RNG, optimizer memory), saved atomically after every candidate, and the
run that evaluates and tells candidates."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lcp.engine.graph import ChannelGraph
from lcp.errors import LcpError
from lcp.io import atomic_write_json, read_json
from lcp.methods.legr.evaluator import Evaluator, SearchResult, transforms_from_vector

log = logging.getLogger("lcp.methods.legr")
_STATE_FORMAT = "lcp-search-state/1"


class SearchState:
    """Everything a search needs to continue: written to ``state_path`` after every candidate."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = settings
        self.rng: dict[str, Any] | None = None
        self.pop_z: list[list[float]] = []
        self.pop_f: list[float] = []
        self.queue: list[int] = []  # population slots, oldest first
        self.evaluated: list[dict[str, Any]] = []  # {"z": [...], "fitness": f}
        self.history: list[dict[str, float]] = []
        self.pending: list[list[float]] = []  # generated but not yet told, in candidate order
        self.results: dict[int, list[float]] = {}  # pending index -> [fitness, seconds]
        self.elapsed = 0.0  # wall seconds spent searching, over every run of a resumed search
        #: why an earlier run stopped early and the limit it met: {"by": "time"|"convergence", "limit": ...}
        self.stopped: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _STATE_FORMAT,
            "settings": self.settings,
            "rng": self.rng,
            "population": {"z": self.pop_z, "fitness": self.pop_f, "queue": self.queue},
            "evaluated": self.evaluated,
            "history": self.history,
            "pending": self.pending,
            "pending_results": {str(k): v for k, v in self.results.items()},
            "elapsed": self.elapsed,
            "stopped": self.stopped,
        }

    @classmethod
    def load(cls, path: Path, settings: dict[str, Any]) -> SearchState:
        data = read_json(path, what="search state")
        if not isinstance(data, dict) or data.get("format") != _STATE_FORMAT:
            raise LcpError(f"{path} is not an lcp search state: delete it or start without --resume")
        old = data.get("settings", {})
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            said = ", ".join(f"{k}={old.get(k)!r} (now {settings[k]!r})" for k in diff[:4])
            raise LcpError(f"search state {path} was made with {said}: use the same settings or start without --resume")
        st = cls(settings)
        try:
            st.rng = data["rng"]
            pop = data["population"]
            st.pop_z, st.pop_f, st.queue = pop["z"], [float(f) for f in pop["fitness"]], pop["queue"]
            st.evaluated = [{"z": e["z"], "fitness": float(e["fitness"])} for e in data["evaluated"]]
            st.history = data["history"]
            st.pending = data["pending"]
            st.results = {int(k): [float(v[0]), float(v[1])] for k, v in data["pending_results"].items()}
            st.elapsed = float(data.get("elapsed", 0.0))
            st.stopped = data.get("stopped")
        except (KeyError, TypeError, ValueError, IndexError):
            raise LcpError(f"search state {path} is incomplete: delete it or start without --resume") from None
        return st


class SearchRun:
    """Shared machinery of both optimizers: telling results, history, state, progress."""

    def __init__(
        self,
        graph: ChannelGraph,
        state: SearchState,
        state_path: Path | None,
        candidates: int,
        evaluator: Evaluator,
        progress: bool,
        decode: Callable[[np.ndarray], np.ndarray],
        *,
        stop_after: int | None = None,
        time_budget: float | None = None,
        patience: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        from tqdm.auto import tqdm

        self.graph, self.state, self.state_path = graph, state, state_path
        self.candidates, self.evaluator, self.decode = candidates, evaluator, decode
        #: candidates this run may evaluate: ``stop_after`` cuts the schedule of ``candidates`` short
        self.limit = min(candidates, stop_after) if stop_after else candidates
        self.time_budget, self.patience, self.clock = time_budget, patience, clock
        self._since, self._at = state.elapsed, clock()
        self._checks: list[float] = []  # elapsed() at each ``done`` check of this run: batch durations
        self.stopped_by = "candidates"
        self.best = min((e["fitness"] for e in state.evaluated), default=math.inf)
        self.bar = tqdm(
            total=self.limit,
            initial=len(state.evaluated),
            desc="search",
            disable=not progress,
            dynamic_ncols=True,
            leave=False,
        )
        self._postfix()

    def elapsed(self) -> float:
        """Wall seconds of search so far, earlier runs of a resumed search included."""
        return self._since + self.clock() - self._at

    def done(self) -> bool:
        """No more candidates: the limit is reached, or the time budget is spent or would be by the next batch
        (checked between batches, so a started batch is always finished and told; the next batch is predicted to
        take the median of this run's last five batches, so the search ends within its budget)."""
        now = self.elapsed()
        self._checks.append(now)
        if len(self.state.evaluated) >= self.limit:
            return True
        if not self.state.evaluated:  # the identity is always evaluated, whatever the budget
            return False
        if self._stopped_before():  # a resumed search that had stopped: the same result, not more candidates
            return True
        steps = np.diff(self._checks[-6:])
        if self.time_budget is not None and now + (float(np.median(steps)) if len(steps) else 0.0) > self.time_budget:
            return self._stop("time", self.time_budget)
        if self.patience and self.since_improvement() >= self.patience:
            return self._stop("convergence", self.patience)
        return False

    def _stop(self, by: str, limit: float) -> bool:
        self.stopped_by, self.state.stopped = by, {"by": by, "limit": limit}
        self.save()
        return True

    def _stopped_before(self) -> bool:
        """An earlier run of this search stopped at a limit this run keeps (a larger time budget or patience, or
        none, lets it go on)."""
        st = self.state.stopped
        if not st:
            return False
        mine = self.time_budget if st["by"] == "time" else self.patience
        if mine is None or not mine or float(mine) > float(st["limit"]):
            return False
        self.stopped_by = st["by"]
        return True

    def since_improvement(self) -> int:
        """Candidates evaluated since the best fitness last improved."""
        fitness = [e["fitness"] for e in self.state.evaluated]
        if not fitness:
            return 0
        return len(fitness) - 1 - int(np.argmin(fitness))

    def room(self, width: int) -> int:
        """Candidates of the next batch: the pool's width, at most what is left of the limit."""
        return min(width, self.limit - len(self.state.evaluated))

    def _postfix(self) -> None:
        left = {}
        if self.time_budget is not None:
            left = {"left": f"{max(0.0, self.time_budget - self.elapsed()):.0f}s"}
        self.bar.set_postfix(best=f"{self.best:.4f}", **left, refresh=False)

    def save(self) -> None:
        self.state.elapsed = self.elapsed()
        if self.state_path is not None:
            atomic_write_json(self.state_path, self.state.to_json())

    def evaluate_pending(self) -> None:
        """Evaluate the pending candidates that have no result yet, saving the state after each."""
        st = self.state
        todo = [
            (i, transforms_from_vector(self.graph, self.decode(np.asarray(z))))
            for i, z in enumerate(st.pending)
            if i not in st.results
        ]
        for i, value, seconds in self.evaluator.run(todo):
            st.results[i] = [value, seconds]
            self.save()

    def tell(self, z: Sequence[float], value: float, seconds: float) -> None:
        """Record one evaluated candidate (in candidate order)."""
        st = self.state
        if value < self.best:
            self.best = value
        st.evaluated.append({"z": list(map(float, z)), "fitness": value})
        st.history.append({"candidate": len(st.evaluated), "fitness": value, "best": self.best, "seconds": seconds})
        self._postfix()  # before update(), which redraws the bar
        self.bar.update(1)

    def result(self) -> SearchResult:
        """The best candidate ever evaluated (argmin keeps the first of ties: the identity wins them)."""
        st = self.state
        i = int(np.argmin([e["fitness"] for e in st.evaluated]))
        tf = transforms_from_vector(self.graph, self.decode(np.asarray(st.evaluated[i]["z"])))
        return SearchResult(tf, float(st.evaluated[i]["fitness"]), list(st.history), self.stopped_by, self.elapsed())

"""LeGR / LcP: learn per-group ``(alpha, kappa)`` so that one global ranking of compensated scores prunes well.

``fitness`` (the objective: held-out loss after the cut), ``evaluator`` (serial, process-pool or Dask
evaluation of candidates), ``evolution`` (LeGR's regularized evolution or a nevergrad optimizer, resumable) and
``method`` (the registered method ``lcp`` with its ``SearchOptions``).
"""

from lcp.methods.legr.evaluator import SearchResult, group_std, standardized
from lcp.methods.legr.evolution import COMPENSATIONS, OPTIMIZERS, search
from lcp.methods.legr.fitness import Fitness, FitnessFn, make_fitness
from lcp.methods.legr.method import LegrMethod, SearchOptions
from lcp.methods.legr.outputs import write_outputs, write_search_csv

__all__ = [
    "COMPENSATIONS",
    "OPTIMIZERS",
    "Fitness",
    "FitnessFn",
    "LegrMethod",
    "SearchOptions",
    "SearchResult",
    "group_std",
    "make_fitness",
    "search",
    "standardized",
    "write_outputs",
    "write_search_csv",
]

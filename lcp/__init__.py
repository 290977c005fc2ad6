"""lcp: layer-compensated structured pruning (LcP / LeGR) for convolutional networks."""
__version__ = "0.1.0"

from .check import CheckReport, check
from .cost import count_macs, count_params
from .errors import LcpError, UnreachableBudget
from .graph import ChannelGraph, build_graph
from .models import create_model
from .pruner import PruneResult, prune
from .store import load, save

__all__ = ["ChannelGraph", "CheckReport", "check", "LcpError", "PruneResult", "UnreachableBudget", "build_graph", "count_macs",
           "count_params", "create_model", "load", "prune", "save", "__version__"]

"""lcp: layer-compensated structured pruning (LcP / LeGR) for convolutional networks."""
from .cost import count_macs, count_params
from .errors import LcpError, UnreachableBudget
from .graph import ChannelGraph, build_graph
from .pruner import PruneResult, prune

__version__ = "0.1.0"

__all__ = ["ChannelGraph", "LcpError", "PruneResult", "UnreachableBudget", "build_graph", "count_macs",
           "count_params", "prune", "__version__"]

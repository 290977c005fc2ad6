"""lcp: layer-compensated structured pruning (LcP / LeGR) for convolutional networks."""
from lcp._version import __version__

from lcp.cut.diagnose import CheckReport, check
from lcp.engine.cost import count_macs, count_params
from lcp.errors import LcpError, UnreachableBudget
from lcp.engine.graph import ChannelGraph, build_graph
from lcp.engine.rules import (module_rule, register_function_rule, register_module_rule, unregister_function_rule,
                              unregister_module_rule)
from lcp.models.factory import create_model
from lcp.cut.pruner import PruneResult
from lcp.api import prune
from lcp.models.store import load, save

__all__ = ["ChannelGraph", "CheckReport", "check", "LcpError", "PruneResult", "UnreachableBudget", "build_graph", "count_macs",
           "count_params", "create_model", "load", "module_rule", "prune", "register_function_rule",
           "register_module_rule", "save", "unregister_function_rule", "unregister_module_rule", "__version__"]

"""lcp: layer-compensated structured pruning (LcP / LeGR) for convolutional networks.

The public API: prune (``prune``, ``check``), count (``count_macs``, ``count_params``), build and keep models
(``create_model``, ``save``, ``load``, ``build_graph``), recover and deploy (``finetune``, ``export``), and the
three extension points, each a registry: methods (``register_method``), op rules for custom modules
(``register_module_rule``, ``register_function_rule``) and importance criteria (``register_importance``). See
docs/architecture.md.
"""

from lcp._version import __version__
from lcp.api import prune
from lcp.cut.diagnose import CheckReport, check
from lcp.cut.importance import Importance, register_importance, unregister_importance
from lcp.cut.pruner import PruneResult
from lcp.engine.cost import count_macs, count_params
from lcp.engine.graph import ChannelGraph, build_graph
from lcp.engine.rules import (
    module_rule,
    register_function_rule,
    register_module_rule,
    unregister_function_rule,
    unregister_module_rule,
)
from lcp.errors import LcpError, UnreachableBudget
from lcp.methods import Context, Learned, Method, method_names, register_method, unregister_method
from lcp.models.export import export
from lcp.models.factory import create_model
from lcp.models.store import load, save
from lcp.training.train import finetune

__all__ = [
    "ChannelGraph",
    "CheckReport",
    "Context",
    "Importance",
    "LcpError",
    "Learned",
    "Method",
    "PruneResult",
    "UnreachableBudget",
    "__version__",
    "build_graph",
    "check",
    "count_macs",
    "count_params",
    "create_model",
    "export",
    "finetune",
    "load",
    "method_names",
    "module_rule",
    "prune",
    "register_function_rule",
    "register_importance",
    "register_method",
    "register_module_rule",
    "save",
    "unregister_function_rule",
    "unregister_importance",
    "unregister_method",
    "unregister_module_rule",
]

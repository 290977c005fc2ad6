"""The channel-dependency engine: trace a model, find the channels removed together, cost and cut them.

Teach it a custom module with ``register_module_rule`` (see docs/engine.md, "Teach lcp a custom module").
"""

from lcp.engine.rules import (
    RuleTable,
    module_rule,
    register_function_rule,
    register_module_rule,
    unregister_function_rule,
    unregister_module_rule,
)
from lcp.engine.types import Chan, LayerKind

__all__ = [
    "Chan",
    "LayerKind",
    "RuleTable",
    "module_rule",
    "register_function_rule",
    "register_module_rule",
    "unregister_function_rule",
    "unregister_module_rule",
]

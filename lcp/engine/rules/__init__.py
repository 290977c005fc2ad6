"""How channel ids flow through each op: a registry of rules, and the ``Propagator`` that applies them.

- ``registry``: ``RuleTable``, the default table ``RULES`` and ``register_module_rule`` / ``register_function_rule``
  (teach lcp a custom module or function);
- ``modules``: convs, linears, norms, activations, pools (module rules, by type);
- ``elementwise``: activations and arithmetic (function rules, by op name);
- ``shapes``: concat / split / indexing, shape ops, reductions, padding (function rules, by op name);
- ``propagator``: the driver that walks the traced graph and looks every node's rule up.
"""

from lcp.engine.rules import elementwise as _elementwise  # noqa: F401  (registers its rules)
from lcp.engine.rules import shapes as _shapes  # noqa: F401  (registers its rules, after elementwise)
from lcp.engine.rules.modules import (
    conv_rule,
    is_elementwise_module,
    is_std_conv,
    linear_rule,
    norm_rule,
    pad_channels_rule,
    passthrough_rule,
)
from lcp.engine.rules.propagator import Propagator, meta_shapes, op_name
from lcp.engine.rules.registry import (
    RULES,
    FunctionRule,
    ModuleRule,
    RuleTable,
    module_rule,
    register_function_rule,
    register_module_rule,
    unregister_function_rule,
    unregister_module_rule,
)


def leaf_types() -> tuple[type, ...]:
    """Module types the tracer keeps whole because a registered rule models them."""
    return RULES.leaf_types()


__all__ = [
    "RULES",
    "FunctionRule",
    "ModuleRule",
    "Propagator",
    "RuleTable",
    "conv_rule",
    "is_elementwise_module",
    "is_std_conv",
    "leaf_types",
    "linear_rule",
    "meta_shapes",
    "module_rule",
    "norm_rule",
    "op_name",
    "pad_channels_rule",
    "passthrough_rule",
    "register_function_rule",
    "register_module_rule",
    "unregister_function_rule",
    "unregister_module_rule",
]

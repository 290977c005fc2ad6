"""Methods: what to remove. One interface (``Method``: learn once, cut to each budget) and one registry.

Built in, in ``--method`` order: ``lcp`` (LeGR search, ``legr``), ``global``, ``uniform``, ``random``
(``simple``), ``lfgcl``, ``amc`` (DDPG keep ratios, ``ddpg``), ``ads``, ``lwp`` (DenseNet connections,
``connections``), and ``structure-from`` (``structure``: an earlier run's structure). Adding one is one module
with a ``@register_method`` class (see ``base``).
"""

from lcp.methods import connections, ddpg, legr, simple, structure  # noqa: E402,F401  (registration order)
from lcp.methods.base import (
    Context,
    Learned,
    Method,
    describe_methods,
    get_method,
    method_names,
    register_method,
    unregister_method,
)

__all__ = [
    "Context",
    "Learned",
    "Method",
    "describe_methods",
    "get_method",
    "method_names",
    "register_method",
    "unregister_method",
]

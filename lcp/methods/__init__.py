"""Methods: what to remove. One interface (``Method``: learn once, cut to each budget) and one registry.

Built in, in ``--method`` order: ``lcp`` (LeGR search, ``legr``), ``global``, ``uniform``, ``random``
(``simple``), ``lfgcl``, ``amc`` (DDPG keep ratios, ``ddpg``), ``ads``, ``lwp`` (DenseNet connections,
``connections``), and ``structure-from`` (``structure``: an earlier run's structure). Adding one is one module
with a ``@register_method`` class (see ``base``).
"""

from lcp.methods.base import (
    Context,
    ForeignOptionError,
    Learned,
    Method,
    describe_methods,
    get_method,
    method_names,
    register_method,
    unregister_method,
)

# isort: off
# the built-in methods register themselves on import, in this order (the order of --method's choices)
from lcp.methods import legr  # noqa: E402,F401
from lcp.methods import simple  # noqa: E402,F401
from lcp.methods import ddpg  # noqa: E402,F401
from lcp.methods import connections  # noqa: E402,F401
from lcp.methods import structure  # noqa: E402,F401
# isort: on

__all__ = [
    "Context",
    "ForeignOptionError",
    "Learned",
    "Method",
    "describe_methods",
    "get_method",
    "method_names",
    "register_method",
    "unregister_method",
]

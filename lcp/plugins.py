"""User modules the ``lcp`` command imports first: ``$LCP_PLUGINS``, comma-separated module names. A plugin
registers methods, importance criteria or op rules (``lcp.register_method`` and the like) when imported, so they
are choices of the command line as they are of the API once the caller imports them."""

from __future__ import annotations

import importlib
import os
import sys

from lcp.errors import LcpError, first_line

ENV = "LCP_PLUGINS"


def import_plugins() -> list[str]:
    """Import the modules named in ``$LCP_PLUGINS`` (the working directory is searched last, as ``python -m``
    would search it first); a module that fails to import, or exits while importing, is an LcpError."""
    names = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    if names and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # the console script's path holds its own folder, not the user's
    for name in names:
        try:
            importlib.import_module(name)
        except (Exception, SystemExit) as e:  # a plugin's own bug, or a script named by mistake: one line
            raise LcpError(f"${ENV}: cannot import {name!r}: {type(e).__name__}: {first_line(e)}") from None
    return names

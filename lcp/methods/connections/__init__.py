"""RL search over DenseNet connections: methods ``ads`` (accuracy reward) and ``lwp`` (FLOPs-shaped reward).

``controller`` (the LSTM controller, REINFORCE, resumable) and ``method`` (held-out evaluation, the registered
methods, the connection cut).
"""

from lcp.methods.connections.controller import (
    CONNECTION_METHODS,
    Controller,
    ControllerConfig,
    ControllerResult,
    search_connections,
    shaped_reward,
)
from lcp.methods.connections.method import AdsMethod, HeldOut, LwpMethod, cut_connections, write_controller_csv
from lcp.methods.connections.toy import match_toy

__all__ = [
    "CONNECTION_METHODS",
    "AdsMethod",
    "Controller",
    "ControllerConfig",
    "ControllerResult",
    "HeldOut",
    "LwpMethod",
    "cut_connections",
    "match_toy",
    "search_connections",
    "shaped_reward",
    "write_controller_csv",
]

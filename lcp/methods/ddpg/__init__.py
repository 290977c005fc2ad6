"""A DDPG agent (AMC) that sets the keep ratio of every channel group: methods ``lfgcl`` and ``amc``.

``env`` (ratios, cost, budget walls), ``agent`` (actor-critic and the resumable episode loop), ``method`` (the
registered methods and ``search_ratios``).
"""

from lcp.methods.ddpg.agent import DDPG, run_agent
from lcp.methods.ddpg.env import AgentConfig, AgentResult, Env, RatioCost, quadratic_toy
from lcp.methods.ddpg.method import AGENT_METHODS, AmcMethod, LfgclMethod, search_ratios, write_agent_csv

__all__ = [
    "AGENT_METHODS",
    "DDPG",
    "AgentConfig",
    "AgentResult",
    "AmcMethod",
    "Env",
    "LfgclMethod",
    "RatioCost",
    "quadratic_toy",
    "run_agent",
    "search_ratios",
    "write_agent_csv",
]

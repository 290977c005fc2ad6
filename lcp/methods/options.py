"""Options of the learned agents (declared once): DDPG keep ratios (lfgcl, amc), connection controllers (ads, lwp)."""

from __future__ import annotations

from dataclasses import dataclass

from lcp.options import at_least, option

_GROUP = "agent (methods lfgcl, amc, ads and lwp)"


@dataclass
class AgentOptions:
    """Episodes of the agents; part of the run signature only for the methods that use them."""

    episodes: int = option(30, "agent episodes, warm-up included", check=at_least(1), signature=False, group=_GROUP)
    warmup_episodes: int = option(
        10, "random-action episodes before the agent learns", check=at_least(0), signature=False, group=_GROUP
    )

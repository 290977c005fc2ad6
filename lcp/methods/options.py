"""Options of the learned agents (declared once): DDPG keep ratios (lfgcl, amc), connection controllers (ads, lwp)."""

from __future__ import annotations

from dataclasses import dataclass

from lcp.options import at_least, option

_GROUP = "agent (methods lfgcl, amc, ads and lwp)"


@dataclass
class AgentOptions:
    """Episodes of the agents; part of the run signature only for the methods that use them."""

    episodes: int | None = option(
        None,
        "agent episodes (default: 200 for lfgcl and amc, their starting cuts and warm-up included; 30 for ads and lwp)",
        check=at_least(1),
        signature=False,
        group=_GROUP,
    )
    warmup_episodes: int = option(
        50,
        "lfgcl / amc: episodes drawn around the best starting cut before the agent learns",
        check=at_least(0),
        signature=False,
        group=_GROUP,
    )


#: each agent method's episodes when ``--episodes`` is not given
DEFAULT_EPISODES = {"lfgcl": 200, "amc": 200, "ads": 30, "lwp": 30}


def episodes_for(method: str, episodes: int | None) -> int:
    """``episodes``, or ``method``'s default when it is None."""
    return int(episodes) if episodes is not None else DEFAULT_EPISODES[method]

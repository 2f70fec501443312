"""Connecting as agentbus's env files say, with nats-py and no agentbus code.

`agentbus creds add <agent>` writes an env file holding NATS_URL (no secret),
NATS_NKEY (the path of the agent's nkey seed file) and AGENTBUS_AGENT. With
that identity the server lets the agent receive replies under
`_INBOX.<agent>.>` only, and stamps nothing: the agent names itself as the
last token of what it sends (agent.<to>.task.<agent>), which its permissions
allow for its own name alone. Without AGENTBUS_AGENT, NATS_URL carries the
credentials and nothing is stamped.
"""

import os
from typing import Optional

import nats


def agent() -> Optional[str]:
    """The agent this process is, when it runs with an agent identity."""
    return os.environ.get("AGENTBUS_AGENT") or None


async def connect(name: str) -> nats.NATS:
    """Connects as the environment says."""
    options = {"name": name}
    seed = os.environ.get("NATS_NKEY")
    if seed:
        options["nkeys_seed"] = seed
    me = agent()
    if me:
        options["inbox_prefix"] = f"_INBOX.{me}"
    return await nats.connect(os.environ["NATS_URL"], **options)


def task_subject(to: str) -> str:
    """Where a task for agent `to` goes: stamped with this agent's name when
    it has an identity, so the receiver knows who sent it."""
    me = agent()
    return f"agent.{to}.task.{me}" if me else f"agent.{to}.task"

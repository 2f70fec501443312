"""A Python agent speaking agentbus's TaskRequest/TaskResponse JSON with nats-py.

No agentbus code: plain dataclasses for TaskRequest/TaskResponse, queue
subscriptions on agent.<name>.task and agent.<name>.task.* (the form whose
last token is the sender, which the bus vouches for), and msg.respond().
With an agent's env file (see agentbus_identity.py) it runs on that identity.

Task types:
  reverse  payload {"text": str}; result {"text": <reversed>, "priority_seen": <priority>,
           "task_id_seen": <task_id>}
  fail     always answered with status "failed" and an error message
Any other task type is answered with status "rejected".

Usage: NATS_URL=nats://<user>:<password>@<host>:<port> python py_agent.py [AGENT_NAME]
   or: (the variables of <data-dir>/agents/<agent>.env) python py_agent.py AGENT_NAME
Prints "ready" once subscribed and flushed; stops on SIGTERM or SIGINT.
"""

import asyncio
import json
import signal
import sys
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Optional

import agentbus_identity


class TaskStatus(str, Enum):
    COMPLETED = "completed"
    FAILED = "failed"
    REJECTED = "rejected"


@dataclass
class TaskRequest:
    task_id: str
    task_type: str
    payload: dict = field(default_factory=dict)
    priority: str = "normal"


@dataclass
class TaskResponse:
    task_id: str
    status: str
    result: Optional[dict] = None
    error: Optional[str] = None


def parse_request(data: bytes) -> TaskRequest:
    raw: Any = json.loads(data)
    return TaskRequest(
        task_id=raw["task_id"],
        task_type=raw["task_type"],
        payload=raw.get("payload") or {},
        priority=raw.get("priority") or "normal",
    )


def sender_of(subject: str) -> dict:
    """Who sent a task: the stamped subject's last token, vouched for by the
    server's permissions; unverified on the plain subject."""
    tokens = subject.split(".")
    if len(tokens) == 4:
        return {"agent": tokens[3], "verified": True}
    return {"agent": None, "verified": False}


def handle(request: TaskRequest, sender: dict) -> TaskResponse:
    if request.task_type == "whoami":
        return TaskResponse(request.task_id, TaskStatus.COMPLETED.value, result={"sender": sender})
    if request.task_type == "reverse":
        text = request.payload.get("text")
        if not isinstance(text, str):
            return TaskResponse(
                request.task_id, TaskStatus.REJECTED.value, error="payload.text must be a string"
            )
        result = {
            "text": text[::-1],
            "priority_seen": request.priority,
            "task_id_seen": request.task_id,
        }
        return TaskResponse(request.task_id, TaskStatus.COMPLETED.value, result=result)
    if request.task_type == "fail":
        return TaskResponse(
            request.task_id, TaskStatus.FAILED.value, error="py_agent failed on purpose"
        )
    return TaskResponse(
        request.task_id,
        TaskStatus.REJECTED.value,
        error=f"py_agent does not accept task_type {request.task_type!r}",
    )


async def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "py_agent"
    nc = await agentbus_identity.connect(f"python-{name}")

    async def on_task(msg) -> None:
        try:
            request = parse_request(msg.data)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            response = TaskResponse("", TaskStatus.REJECTED.value, error=f"malformed request: {err}")
        else:
            response = handle(request, sender_of(msg.subject))
        await msg.respond(json.dumps(asdict(response)).encode())

    await nc.subscribe(f"agent.{name}.task", queue=name, cb=on_task)
    await nc.subscribe(f"agent.{name}.task.*", queue=name, cb=on_task)
    await nc.flush()
    print("ready", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())

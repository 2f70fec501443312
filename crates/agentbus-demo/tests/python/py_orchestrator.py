"""A Python orchestrator speaking agentbus's TaskRequest/TaskResponse JSON with nats-py.

Sends one TaskRequest to agent.<AGENT>.task with nc.request() and prints one
JSON line: {"sent": <the TaskRequest>, "received": <the TaskResponse>}. With
an agent's env file (see agentbus_identity.py) it sends as that agent, to
agent.<AGENT>.task.<itself>.

Usage: NATS_URL=nats://<user>:<password>@<host>:<port> \
    python py_orchestrator.py AGENT TASK_TYPE PAYLOAD_JSON [--priority P] [--extra-field]

--extra-field adds a field the wire format does not define, which receivers must ignore.
"""

import argparse
import asyncio
import json
import sys
import uuid
from dataclasses import asdict, dataclass, field

import agentbus_identity
from nats.errors import NoRespondersError, TimeoutError


@dataclass
class TaskRequest:
    task_id: str
    task_type: str
    payload: dict = field(default_factory=dict)
    priority: str = "normal"


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("agent")
    parser.add_argument("task_type")
    parser.add_argument("payload")
    parser.add_argument("--priority", default="normal")
    parser.add_argument("--extra-field", action="store_true")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()

    request = asdict(
        TaskRequest(
            task_id=str(uuid.uuid4()),
            task_type=args.task_type,
            payload=json.loads(args.payload),
            priority=args.priority,
        )
    )
    if args.extra_field:
        request["trace"] = {"origin": "py_orchestrator", "hops": 1}

    nc = await agentbus_identity.connect("python-orchestrator")
    try:
        reply = await nc.request(
            agentbus_identity.task_subject(args.agent),
            json.dumps(request).encode(),
            timeout=args.timeout,
        )
    except NoRespondersError:
        print(f"no agent named {args.agent!r} is running", file=sys.stderr)
        return 2
    except TimeoutError:
        print(f"agent {args.agent!r} did not answer within {args.timeout}s", file=sys.stderr)
        return 3
    finally:
        await nc.close()
    print(json.dumps({"sent": request, "received": json.loads(reply.data)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

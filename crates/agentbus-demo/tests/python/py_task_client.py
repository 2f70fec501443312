"""A Python client of agentbus task lifecycles, written from docs/PROTOCOL.md alone.

No agentbus code: nats-py, the TaskRequest/TaskResponse JSON, the event logs
in stream agent-task-events, the control subjects
task.<from>.<runner>.<id>.control.<verb> (from "_": this client has no agent
identity; runner "_._": it does not say who runs the task, which only a client
without an identity may leave out),
the task records in bucket agent-task-results and the queues in agent-tasks.
A task's log and record are kept under its key,
<agent|work>.<runner>.<caller>.<task_id>; this client connects as the
operator and finds a task under any runner and caller.

Commands (each prints JSON on stdout, one object per line):

  send AGENT TASK_TYPE PAYLOAD_JSON [--task-id ID] [--stream]
       [--deadline-ms MS | --deadline RFC3339] [--timeout S]
      Sends a TaskRequest over request/reply; prints {"sent": ..., "received": ...}.
  watch TASK_ID [--from N] [--timeout S]
      Prints each event of the task's log from seq N (default 1) as stored, and
      {"type": "gone", "from": A, "until": B} for events no longer stored; ends
      after the final event.
  cancel TASK_ID
      Prints {"outcome": "cancelling", "agent", "instance"} (a runtime stops it),
      {"outcome": "dequeued"} (taken out of its queue), {"outcome": "marked"}
      (no runtime held it; log and record now say cancelled),
      {"outcome": "already_over", "state"}, or {"outcome": "unknown"} (exit 1).
  answer TASK_ID ANSWER_JSON
      Prints {"outcome": "answered", "agent", "instance"}; or, with exit 1,
      {"outcome": "refused", "error"}, {"outcome": "over", "state"} or
      {"outcome": "not_held"}.
  status TASK_ID
      Prints {"task_id", "state", "record", "last_event", "held_by", "key"}.

Exit codes: 0 done, 1 refused (above), 2 no agent answers the task subject,
3 timed out, 4 the task is over and its log holds nothing.

Usage: NATS_URL=nats://<user>:<password>@<host>:<port> python py_task_client.py COMMAND ...
"""

import argparse
import asyncio
import json
import os
import sys
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

import nats
from nats.errors import NoRespondersError, TimeoutError
from nats.js.api import DeliverPolicy
from nats.js.errors import APIError, NotFoundError

TASK_EVENTS_STREAM = "agent-task-events"
TASKS_STREAM = "agent-tasks"
RESULTS_BUCKET = "agent-task-results"
# Only the runtime holding a task answers a control request: silence this
# long means no runtime holds it.
CONTROL_WAIT = 0.5
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = 10071

FINAL_EVENTS = {"completed", "failed", "rejected", "timeout", "cancelled"}
FINAL_STATES = FINAL_EVENTS | {"dead_lettered", "finished_without_record"}
PRIORITIES = {"critical", "high", "low"}


def rfc3339(moment: datetime) -> str:
    """UTC with milliseconds and Z, as the protocol writes times."""
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def key_pattern(task_id: str) -> str:
    """The keys task_id may be kept under, whoever runs and sent it."""
    return f"*.*.*.{task_id}"


def events_subject(key: str) -> str:
    return f"task.{key}.events"


def key_of_events(subject: str) -> str:
    return subject[len("task."):-len(".events")]


def out(value: Any) -> None:
    print(json.dumps(value), flush=True)


def state_of_event(kind: str) -> str:
    if kind == "accepted":
        return "queued"
    if kind == "input_required" or kind in FINAL_EVENTS:
        return kind
    return "running"


def durable_of(subject: str) -> Optional[str]:
    """The consumer of a queue subject: tasks.<agent>[.<p>] or work.<type>[.<p>]."""
    tokens = subject.split(".")
    if tokens[0] not in ("tasks", "work") or len(tokens) not in (2, 3):
        return None
    priority = tokens[2] if len(tokens) == 3 else "normal"
    if len(tokens) == 3 and priority not in PRIORITIES:
        return None
    return f"{tokens[0]}-{tokens[1]}-{priority}"


class Client:
    def __init__(self, nc) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.jsm = nc.jsm()
        self._kv = None

    async def kv(self):
        if self._kv is None:
            self._kv = await self.js.key_value(RESULTS_BUCKET)
        return self._kv

    async def control(self, task_id: str, verb: str, body: bytes = b"") -> Optional[dict]:
        """The holder's reply to a control request; None on silence."""
        try:
            reply = await self.nc.request(f"task._._._.{task_id}.control.{verb}", body, timeout=CONTROL_WAIT)
        except (TimeoutError, NoRespondersError):
            return None
        try:
            value = json.loads(reply.data)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    async def last_event(self, task_id: str, key: Optional[str] = None):
        """The log's last message (of the log under key, else under any key of
        the task): its event (None when it is not an event of the task), its
        stream sequence and the task's key; (None, None, None) for an empty log."""
        subject = events_subject(key or key_pattern(task_id))
        try:
            raw = await self.jsm.get_last_msg(TASK_EVENTS_STREAM, subject)
        except NotFoundError:
            return None, None, None
        return parse_event(raw.data, task_id), raw.seq, key_of_events(raw.subject)

    async def record(self, task_id: str):
        """The task's record and its key; (None, None) when there is none."""
        prefix = f"$KV.{RESULTS_BUCKET}."
        try:
            raw = await self.jsm.get_last_msg(f"KV_{RESULTS_BUCKET}", prefix + key_pattern(task_id))
        except NotFoundError:
            return None, None
        key = raw.subject[len(prefix):]
        if (raw.headers or {}).get("KV-Operation", "PUT") != "PUT":
            return None, key
        try:
            record = json.loads(raw.data)
        except (TypeError, ValueError):
            return None, key
        if not (isinstance(record, dict) and "state" in record and record.get("task_id") == task_id):
            return None, key
        return record, key

    async def queue_state(self, task_id: str, subject: str, sequence: int) -> str:
        try:
            raw = await self.jsm.get_msg(TASKS_STREAM, seq=sequence)
        except NotFoundError:
            return "finished_without_record"
        if task_id_of(raw.data) != task_id:
            return "finished_without_record"
        durable = durable_of(subject)
        if durable is None:
            return "queued"
        try:
            info = await self.jsm.consumer_info(TASKS_STREAM, durable)
        except NotFoundError:
            return "queued"
        return "running" if info.delivered.stream_seq >= sequence else "queued"

    async def lookup(self, task_id: str) -> dict:
        record, record_key = await self.record(task_id)
        last, _, log_key = await self.last_event(task_id)
        logged = state_of_event(last["type"]) if last else None
        held_by = None
        if record is not None:
            stored = record["state"]
            if stored == "queued" and record.get("sequence"):
                state = await self.queue_state(task_id, record["subject"], record["sequence"])
                if state == "finished_without_record" and logged in FINAL_STATES:
                    state = logged
                elif state == "running" and logged == "input_required":
                    state = "input_required"
            elif stored in ("queued", "retrying") and logged in FINAL_STATES:
                state = logged
            else:
                state = stored
        elif logged in FINAL_STATES:
            state = logged
        else:
            held = await self.control(task_id, "status")
            if held is not None and "state" in held:
                held_by = held.get("instance")
                state = "input_required" if held["state"] == "input_required" else "running"
            else:
                state = logged or "unknown"
        return {
            "task_id": task_id,
            "state": state,
            "record": record,
            "last_event": last,
            "held_by": held_by,
            "key": record_key or log_key,
        }

    async def append_alone(self, task_id: str, key: str, kind: str, data: Any, instance: str) -> Optional[dict]:
        """Adds one event to a log nobody else writes now; None when the log is over."""
        for _ in range(3):
            last, stream_seq, _ = await self.last_event(task_id, key)
            if last is None and stream_seq is not None:
                raise RuntimeError(
                    f"the last message on {events_subject(key)} is not an event of the task; "
                    "no event can be numbered after it"
                )
            if last is not None and last["type"] in FINAL_EVENTS:
                return None
            seq, expect = (last["seq"] + 1, stream_seq) if last else (1, 0)
            event = {
                "task_id": task_id,
                "seq": seq,
                "type": kind,
                "time": rfc3339(datetime.now(timezone.utc)),
                "instance": instance,
                "data": data,
            }
            try:
                await self.js.publish(
                    events_subject(key),
                    json.dumps(event).encode(),
                    headers={EXPECTED_LAST_SUBJECT_SEQUENCE: str(expect)},
                )
            except APIError as err:
                if err.err_code == WRONG_LAST_SEQUENCE:
                    continue
                raise
            return event
        raise RuntimeError(f"task {task_id}'s log kept changing while an event was added; try again")

    async def dequeue(self, task_id: str, sequence: int) -> bool:
        try:
            raw = await self.jsm.get_msg(TASKS_STREAM, seq=sequence)
        except NotFoundError:
            return False
        if task_id_of(raw.data) != task_id:
            return False
        try:
            return bool(await self.jsm.delete_msg(TASKS_STREAM, sequence))
        except APIError:
            return False

    async def mark_cancelled(self, task_id: str, key: str, record: Optional[dict]) -> None:
        response = {
            "task_id": task_id,
            "status": "cancelled",
            "result": None,
            "error": "the task was cancelled before it ran",
        }
        await self.append_alone(task_id, key, "cancelled", response, "cancel")
        if record is not None:
            record = dict(record, state="cancelled", response=response)
            record["updated_at"] = rfc3339(datetime.now(timezone.utc))
            kv = await self.kv()
            await kv.put(key, json.dumps(record).encode())

    async def cancel(self, task_id: str) -> dict:
        held = await self.control(task_id, "cancel")
        if held is not None:
            return cancelling(held)
        report = await self.lookup(task_id)
        if report["state"] in FINAL_STATES:
            return {"outcome": "already_over", "state": report["state"]}
        record = report["record"]
        if (
            record is not None
            and report["state"] == "queued"
            and record.get("sequence")
            and await self.dequeue(task_id, record["sequence"])
        ):
            await self.mark_cancelled(task_id, report["key"], record)
            return {"outcome": "dequeued"}
        # A worker may have taken it meanwhile.
        held = await self.control(task_id, "cancel")
        if held is not None:
            return cancelling(held)
        if report["key"] is None:
            return {"outcome": "unknown"}
        await self.mark_cancelled(task_id, report["key"], record)
        return {"outcome": "marked"}

    async def answer(self, task_id: str, answer: Any) -> dict:
        reply = await self.control(task_id, "answer", json.dumps(answer).encode())
        if reply is not None:
            if "error" in reply and reply["error"] is not None:
                return {"outcome": "refused", "error": reply["error"]}
            return {"outcome": "answered", "agent": reply.get("agent"), "instance": reply.get("instance")}
        last, _, _ = await self.last_event(task_id)
        if last is not None and last["type"] in FINAL_EVENTS:
            return {"outcome": "over", "state": last["type"]}
        return {"outcome": "not_held"}

    async def watch(self, task_id: str, start: int, timeout: float) -> int:
        # Follow first, then look: a task that ends in between is still seen.
        sub = await self.js.subscribe(
            events_subject(key_pattern(task_id)),
            stream=TASK_EVENTS_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        _, stream_seq, _ = await self.last_event(task_id)
        if stream_seq is None:
            report = await self.lookup(task_id)
            if report["state"] in FINAL_STATES:
                print(f"task {task_id} is over ({report['state']}) and its log holds no events", file=sys.stderr)
                return 4
        expected = max(start, 1)
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while True:
            left = until - loop.time()
            if left <= 0:
                print(f"task {task_id} logged no final event within {timeout}s", file=sys.stderr)
                return 3
            try:
                msg = await sub.next_msg(timeout=left)
            except TimeoutError:
                continue
            event = parse_event(msg.data, task_id)
            if event is None:
                continue
            final = event["type"] in FINAL_EVENTS
            if event["seq"] < expected:
                if final:
                    return 0
                continue
            if event["seq"] > expected:
                out({"type": "gone", "from": expected, "until": event["seq"]})
            out(event)
            expected = event["seq"] + 1
            if final:
                return 0


def cancelling(held: dict) -> dict:
    return {"outcome": "cancelling", "agent": held.get("agent"), "instance": held.get("instance")}


def parse_event(data: Optional[bytes], task_id: str) -> Optional[dict]:
    try:
        event = json.loads(data or b"")
    except ValueError:
        return None
    if (
        not isinstance(event, dict)
        or event.get("task_id") != task_id
        or not isinstance(event.get("seq"), int)
        or not isinstance(event.get("type"), str)
    ):
        return None
    return event


def task_id_of(data: Optional[bytes]) -> Optional[str]:
    try:
        body = json.loads(data or b"")
    except ValueError:
        return None
    return body.get("task_id") if isinstance(body, dict) else None


async def send(nc, args) -> int:
    request: dict = {
        "task_id": args.task_id or str(uuid.uuid4()),
        "task_type": args.task_type,
        "payload": json.loads(args.payload),
        "priority": "normal",
    }
    if args.stream:
        request["stream"] = True
    if args.deadline is not None:
        request["deadline"] = args.deadline
    elif args.deadline_ms is not None:
        request["deadline"] = rfc3339(datetime.now(timezone.utc) + timedelta(milliseconds=args.deadline_ms))
    try:
        reply = await nc.request(f"agent.{args.agent}.task", json.dumps(request).encode(), timeout=args.timeout)
    except NoRespondersError:
        print(f"no agent named {args.agent!r} is running", file=sys.stderr)
        return 2
    except TimeoutError:
        print(f"agent {args.agent!r} did not answer within {args.timeout}s", file=sys.stderr)
        return 3
    out({"sent": request, "received": json.loads(reply.data)})
    return 0


async def main() -> int:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("send")
    p.add_argument("agent")
    p.add_argument("task_type")
    p.add_argument("payload")
    p.add_argument("--task-id")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--deadline")
    p.add_argument("--deadline-ms", type=int)
    p.add_argument("--timeout", type=float, default=10.0)
    p = commands.add_parser("watch")
    p.add_argument("task_id")
    p.add_argument("--from", dest="start", type=int, default=1)
    p.add_argument("--timeout", type=float, default=20.0)
    for name in ("cancel", "status"):
        commands.add_parser(name).add_argument("task_id")
    p = commands.add_parser("answer")
    p.add_argument("task_id")
    p.add_argument("answer")
    args = parser.parse_args()

    nc = await nats.connect(os.environ["NATS_URL"], name="python-task-client")
    client = Client(nc)
    try:
        if args.command == "send":
            return await send(nc, args)
        if args.command == "watch":
            return await client.watch(args.task_id, args.start, args.timeout)
        if args.command == "cancel":
            outcome = await client.cancel(args.task_id)
            out(outcome)
            return 1 if outcome["outcome"] == "unknown" else 0
        if args.command == "answer":
            outcome = await client.answer(args.task_id, json.loads(args.answer))
            out(outcome)
            return 0 if outcome["outcome"] == "answered" else 1
        out(await client.lookup(args.task_id))
        return 0
    finally:
        await nc.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""Drives `agentbus mcp` bridges with the official MCP Python SDK, on command.

The Rust test (tests/mcp.rs) writes one JSON command per line on stdin; this
script answers each with one JSON line on stdout. Several bridges, each an
`agentbus mcp --agent NAME --server URL` child process spoken to over stdio
by an `mcp.Client`, can be open at once.

Commands (`client` names an open bridge):
  {"op": "open", "client": "a", "agent": "alice", "mode": "auto" | "legacy"}
      optional "env": {...}: the bridge's variables (an agent's identity) in
      place of --server AGENTBUS_SERVER
      -> {"protocol_version": ..., "server_name": ..., "instructions": ...}
  {"op": "list_tools", "client": "a"}
      -> {"tools": [{"name", "description", "input_schema"}]}
  {"op": "call", "client": "a", "tool": "send_message", "args": {...}}
      -> {"is_error": bool, "text": "...", "json": <text parsed as JSON, or null>}
  {"op": "list_resources", "client": "a"} -> {"uris": [...]}
  {"op": "read_resource", "client": "a", "uri": "..."} -> {"text": "..."}
  {"op": "watch", "client": "a", "uri": "..."}
      legacy: resources/subscribe; 2026-07-28: subscriptions/listen -> {"watching": true}
  {"op": "wait_update", "client": "a", "timeout": 10}
      -> {"updated": [uri, ...]} (empty when nothing came within the timeout)
  {"op": "log_lines", "client": "a"} -> {"lines": [data, ...]} (legacy log notifications so far)
  {"op": "close", "client": "a"} -> {"closed": true}
Every failure answers {"error": "..."} and the script goes on.

Environment: AGENTBUS_BIN (the binary), AGENTBUS_SERVER (URL with credentials).
"""

import asyncio
import contextlib
import json
import os
import sys
import traceback

from mcp import Client
from mcp.client.stdio import StdioServerParameters
import mcp_types


class Bridge:
    """One open bridge, served by its own task: the MCP client's contexts
    (anyio cancel scopes) are entered and left in that task, whatever the
    order in which bridges are opened and closed."""

    def __init__(self, command):
        self.open_command = command
        self.commands = asyncio.Queue()
        self.client = None
        self.updates = asyncio.Queue()
        self.log_lines = []
        self.listener = None

    async def on_message(self, message):
        if isinstance(message, mcp_types.ResourceUpdatedNotification):
            await self.updates.put(str(message.params.uri))

    async def on_log(self, params):
        self.log_lines.append(params.data)

    async def run(self, opened):
        closed = None
        try:
            args = ["mcp", "--agent", self.open_command["agent"]]
            # With an env (an agent's identity), the bridge finds the
            # server there; else it joins the test server's user.
            env = self.open_command.get("env")
            if env is None:
                args += ["--server", os.environ["AGENTBUS_SERVER"]]
            params = StdioServerParameters(
                command=os.environ["AGENTBUS_BIN"],
                args=args,
                env=env,
            )
            client = Client(
                params,
                mode=self.open_command.get("mode", "auto"),
                message_handler=self.on_message,
                logging_callback=self.on_log,
            )
            async with contextlib.AsyncExitStack() as stack:
                self.client = await stack.enter_async_context(client)
                info = client.server_info
                opened.set_result(
                    {
                        "protocol_version": client.protocol_version,
                        "server_name": info.name if info else None,
                        "instructions": client.instructions,
                    }
                )
                while True:
                    command, reply = await self.commands.get()
                    if command["op"] == "close":
                        closed = reply
                        break
                    try:
                        reply.set_result(await self.handle(command, stack))
                    except Exception as err:  # reported to the test, which decides
                        reply.set_result(failure(err))
                if self.listener is not None:
                    self.listener.cancel()
        except Exception as err:
            if not opened.done():
                opened.set_result(failure(err))
            elif closed is not None:
                closed.set_result(failure(err))
                return
        if closed is not None:
            closed.set_result({"closed": True})

    async def ask(self, command):
        reply = asyncio.get_running_loop().create_future()
        await self.commands.put((command, reply))
        return await reply

    async def handle(self, command, stack):
        op = command["op"]
        client = self.client
        if op == "list_tools":
            tools = await client.list_tools()
            return {
                "tools": [
                    {"name": t.name, "description": t.description, "input_schema": t.input_schema}
                    for t in tools.tools
                ]
            }
        if op == "call":
            result = await client.call_tool(command["tool"], command.get("args", {}))
            text = "".join(getattr(block, "text", "") for block in result.content)
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            return {"is_error": bool(result.is_error), "text": text, "json": parsed}
        if op == "list_resources":
            resources = await client.list_resources()
            return {"uris": [str(r.uri) for r in resources.resources]}
        if op == "read_resource":
            result = await client.read_resource(command["uri"])
            return {"text": "".join(getattr(c, "text", "") for c in result.contents)}
        if op == "watch":
            return await self.watch(command["uri"], stack)
        if op == "wait_update":
            return await self.wait_update(command.get("timeout", 10))
        if op == "log_lines":
            return {"lines": self.log_lines}
        return {"error": f"unknown op {op!r}"}

    async def watch(self, uri, stack):
        if self.client.protocol_version >= "2026-07-28":
            subscription = await stack.enter_async_context(
                self.client.listen(resource_subscriptions=[uri])
            )

            async def forward():
                async for event in subscription:
                    await self.updates.put(getattr(event, "uri", str(event)))

            self.listener = asyncio.create_task(forward())
        else:
            await self.client.subscribe_resource(uri)
        return {"watching": True}

    async def wait_update(self, timeout):
        updated = []
        try:
            updated.append(await asyncio.wait_for(self.updates.get(), timeout))
            while not self.updates.empty():
                updated.append(self.updates.get_nowait())
        except asyncio.TimeoutError:
            pass
        return {"updated": updated}


def failure(err):
    return {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}


bridges = {}
tasks = set()


async def handle(command):
    op = command["op"]
    name = command["client"]
    if op == "open":
        bridge = Bridge(command)
        opened = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(bridge.run(opened))
        tasks.add(task)
        answer = await opened
        if "error" not in answer:
            bridges[name] = bridge
        return answer
    bridge = bridges[name]
    if op == "close":
        del bridges[name]
    return await bridge.ask(command)


async def main():
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        if not line.strip():
            continue
        try:
            answer = await handle(json.loads(line))
        except Exception as err:  # reported to the test, which decides
            answer = failure(err)
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    for name in list(bridges):
        await bridges.pop(name).ask({"op": "close"})
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())

"""A minimal MCP host for tests/mcp.rs, on the official Python MCP SDK (PyPI `mcp`).

It starts the server command given after `--` (`seb mcp ...`) as a stdio MCP server, initialises
the session, and then reads one JSON command per line on stdin and answers one JSON line on
stdout:

* {"list_tools": true}                  -> {"tools": [{"name", "description", "input_schema",
                                             "output_schema", "annotations"}]}
* {"call": NAME, "arguments": {...}}    -> {"is_error", "structured", "text"}, or
                                           {"protocol_error": {"code", "message"}}, or
                                           {"client_error": "..."} (e.g. structured content that
                                           does not match the tool's output schema: the SDK checks)

It exits when stdin closes. The test (Rust) decides what to call and asserts on the answers, and
acts between calls (approvers approve). Nothing here knows about seb.
"""

import json
import sys

import anyio
from mcp import ClientSession, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client


def answer(value):
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


async def main(command, args):
    server = StdioServerParameters(command=command, args=args)
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write, read_timeout_seconds=60) as session:
            init = await session.initialize()
            answer({"initialized": {"server": init.server_info.name, "protocol": init.protocol_version}})
            while True:
                line = await anyio.to_thread.run_sync(sys.stdin.readline)
                if not line:
                    return
                command = json.loads(line)
                if command.get("list_tools"):
                    listed = await session.list_tools()
                    answer({"tools": [
                        {
                            "name": t.name,
                            "description": t.description,
                            "input_schema": t.input_schema,
                            "output_schema": t.output_schema,
                            "annotations": t.annotations.model_dump(exclude_none=True) if t.annotations else None,
                        }
                        for t in listed.tools
                    ]})
                    continue
                try:
                    result = await session.call_tool(command["call"], command.get("arguments"))
                except MCPError as e:
                    answer({"protocol_error": {"code": e.error.code, "message": e.error.message}})
                    continue
                except RuntimeError as e:
                    answer({"client_error": str(e)})
                    continue
                answer({
                    "is_error": result.is_error,
                    "structured": result.structured_content,
                    "text": [c.text for c in result.content if getattr(c, "type", None) == "text"],
                })


if __name__ == "__main__":
    if "--" not in sys.argv:
        sys.exit("usage: mcp_host.py -- SERVER_COMMAND [ARGS...]")
    rest = sys.argv[sys.argv.index("--") + 1:]
    anyio.run(main, rest[0], rest[1:])

"""A WebSocket service as its users write them with Python `websockets`, for the
passthrough tests: it refuses an upgrade without the right `x-upstream-key` (401), speaks
the subprotocol `realtime.v1`, answers a text `who` with what it saw (path and query, the
key header, the subprotocol, X-Forwarded-For) as JSON, and echoes every other message.
Prints {"port": N} once listening.

Run with: python3 backend.py KEY"""

import asyncio
import json
import sys

import websockets

KEY = sys.argv[1]


async def process_request(path, headers):
    if headers.get("x-upstream-key") != KEY:
        return (401, [], b"bad upstream key\n")
    return None


async def handler(ws, path):
    async for message in ws:
        if message == "who":
            await ws.send(json.dumps({
                "path": path,
                "key": ws.request_headers.get("x-upstream-key") == KEY,
                "subprotocol": ws.subprotocol,
                "forwardedFor": ws.request_headers.get("x-forwarded-for"),
            }))
        else:
            await ws.send(message)


async def main():
    async with websockets.serve(
        handler,
        "127.0.0.1",
        0,
        process_request=process_request,
        subprotocols=["realtime.v1"],
        max_size=16 * 1024 * 1024,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(json.dumps({"port": port}), flush=True)
        await asyncio.Future()


asyncio.run(main())

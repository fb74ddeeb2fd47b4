"""A Python `websockets` client over wss with a private CA: connects to URL trusting
CA_FILE (ssl.create_default_context(cafile=...)), sends TEXT, prints {"reply": ...} with
the first message it gets, closes with 1000.

Run with: python3 wss.py wss://localhost:PORT/ CA_FILE TEXT"""

import asyncio
import json
import ssl
import sys

import websockets


async def main(url, cafile, text):
    context = ssl.create_default_context(cafile=cafile)
    async with websockets.connect(url, ssl=context) as ws:
        await ws.send(text)
        reply = await asyncio.wait_for(ws.recv(), 10)
        print(json.dumps({"reply": reply}))


asyncio.run(main(*sys.argv[1:4]))

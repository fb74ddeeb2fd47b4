# -*- coding: utf8 -*-
"""The chat's cleanup function: closes the connection through the send-back URL (a no-op
when the client already left: that answers 410) and forgets it.

Written as for Tencent SCF behind API Gateway. `SENDBACK_URL` is the reverse push address.
"""
import json
import os
import urllib.error
import urllib.request

import tinyredis

CONNECTIONS = os.environ.get("CONNECTIONS_KEY", "chat:connections")
sendbackHost = os.environ["SENDBACK_URL"]


def close(connectionID):
    retmsg = {}
    retmsg["websocket"] = {}
    retmsg["websocket"]["action"] = "closing"
    retmsg["websocket"]["secConnectionID"] = connectionID
    request = urllib.request.Request(
        sendbackHost,
        data=json.dumps(retmsg).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def main_handler(event, context):
    print("Start Cleanup function")
    if "websocket" not in event.keys():
        return {"errNo": 102, "errMsg": "not found web socket"}

    connectionID = event["websocket"]["secConnectionID"]
    status, body = close(connectionID)
    print("closing %s: %s %s" % (connectionID, status, body))
    tinyredis.command("SREM", CONNECTIONS, connectionID)
    return event

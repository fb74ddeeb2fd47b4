# -*- coding: utf8 -*-
"""The chat's transport function: sends each message, with the number of people online
appended, to everyone else, one send-back ("reverse push") request per connection.

Written as for Tencent SCF behind API Gateway. `SENDBACK_URL` is the reverse push address
(API Gateway's, or Switchboard's `http://<send-back listener>/@tencent/<token>`).
"""
import json
import os
import urllib.error
import urllib.request

import tinyredis

CONNECTIONS = os.environ.get("CONNECTIONS_KEY", "chat:connections")
sendbackHost = os.environ["SENDBACK_URL"]


def send(connectionID, data, dataType="text"):
    retmsg = {}
    retmsg["websocket"] = {}
    retmsg["websocket"]["action"] = "data send"
    retmsg["websocket"]["secConnectionID"] = connectionID
    retmsg["websocket"]["dataType"] = dataType
    retmsg["websocket"]["data"] = data
    request = urllib.request.Request(
        sendbackHost,
        data=json.dumps(retmsg).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        reply = json.loads(e.read() or b"null")
        print("send to %s failed: %s %s" % (connectionID, e.code, reply))
        return e.code, reply


def main_handler(event, context):
    if "websocket" not in event.keys():
        return {"errNo": 102, "errMsg": "not found web socket"}

    connectionID = event["websocket"]["secConnectionID"]
    dataType = event["websocket"].get("dataType", "text")
    data = event["websocket"]["data"]

    connections = tinyredis.command("SMEMBERS", CONNECTIONS)
    if dataType == "text":
        data = data + "(===Online people:%d===)" % len(connections)
    for otherID in connections:
        if otherID != connectionID:
            send(otherID, data, dataType)
    return "send success"

# -*- coding: utf8 -*-
"""The chat's register function: remembers the connection so transport can reach it.

Written as for Tencent SCF behind API Gateway (the registration function of Tencent's
WebSocket sample); only the storage is this directory's tiny Redis client.
"""
import os

import tinyredis

CONNECTIONS = os.environ.get("CONNECTIONS_KEY", "chat:connections")


def main_handler(event, context):
    print("Start Register function")
    if "requestContext" not in event.keys():
        return {"errNo": 101, "errMsg": "not found request context"}
    if "websocket" not in event.keys():
        return {"errNo": 102, "errMsg": "not found websocket"}

    connectionID = event["websocket"]["secConnectionID"]
    tinyredis.command("SADD", CONNECTIONS, connectionID)

    retmsg = {}
    retmsg["errNo"] = 0
    retmsg["errMsg"] = "ok"
    retmsg["websocket"] = {
        "action": "connecting",
        "secConnectionID": connectionID,
    }
    if "secWebSocketProtocol" in event["websocket"].keys():
        retmsg["websocket"]["secWebSocketProtocol"] = event["websocket"]["secWebSocketProtocol"]
    print("connecting \n connection id:%s" % connectionID)
    return retmsg

"""$connect: remember the connection (the simple-websockets-chat-app's OnConnect)."""

import connections


def lambda_handler(event, context):
    connection_id = event["requestContext"]["connectionId"]
    try:
        connections.put(connection_id)
    except Exception as e:
        return {"statusCode": 500, "body": "Failed to connect: " + str(e)}
    return {"statusCode": 200, "body": "Connected."}

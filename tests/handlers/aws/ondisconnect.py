"""$disconnect: forget the connection (the simple-websockets-chat-app's OnDisconnect)."""

import connections


def lambda_handler(event, context):
    connection_id = event["requestContext"]["connectionId"]
    try:
        connections.delete(connection_id)
    except Exception as e:
        return {"statusCode": 500, "body": "Failed to disconnect: " + str(e)}
    return {"statusCode": 200, "body": "Disconnected."}

"""$default: tell the sender how to use the chat, with what the management API knows of its
connection (the sample's $default handler)."""

import json
import os

import boto3


def lambda_handler(event, context):
    connection_id = event["requestContext"]["connectionId"]
    endpoint = os.environ.get("APIGW_ENDPOINT") or "https://{}/{}".format(
        event["requestContext"]["domainName"], event["requestContext"]["stage"]
    )
    apigw = boto3.client("apigatewaymanagementapi", endpoint_url=endpoint)
    info = apigw.get_connection(ConnectionId=connection_id)
    info.pop("ResponseMetadata", None)
    text = "Use the sendmessage route to send a message. Your info: " + json.dumps(
        info, default=str
    )
    apigw.post_to_connection(ConnectionId=connection_id, Data=text.encode())
    return {"statusCode": 200}

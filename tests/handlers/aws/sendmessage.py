"""sendmessage: post `data` to every connection (the simple-websockets-chat-app's
SendMessage), dropping connections that are gone. On Lambda the endpoint would be
https://{domainName}/{stage}; here it comes from APIGW_ENDPOINT, and the keys from the
environment as Lambda provides them."""

import json
import os

import boto3

import connections


def lambda_handler(event, context):
    endpoint = os.environ.get("APIGW_ENDPOINT") or "https://{}/{}".format(
        event["requestContext"]["domainName"], event["requestContext"]["stage"]
    )
    apigw = boto3.client("apigatewaymanagementapi", endpoint_url=endpoint)
    post_data = json.loads(event["body"])["data"]
    for connection_id in connections.scan():
        try:
            apigw.post_to_connection(ConnectionId=connection_id, Data=post_data)
        except apigw.exceptions.GoneException:
            print(f"Found stale connection, deleting {connection_id}")
            connections.delete(connection_id)
    return {"statusCode": 200, "body": "Data sent."}

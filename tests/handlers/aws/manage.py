"""Drives Switchboard's @connections management API with the AWS SDK (boto3), for the
end-to-end tests: one operation per run, the outcome printed as one JSON line.

    python3 manage.py ENDPOINT post ID --data TEXT | --hex HEX | --size N
    python3 manage.py ENDPOINT get ID
    python3 manage.py ENDPOINT delete ID
    python3 manage.py ENDPOINT flood ID --size N --max M   # post until LimitExceededException

Credentials and region come from the environment (AWS_ACCESS_KEY_ID, …) unless
--access-key/--secret are given; --unsigned sends no signature at all; --verify CA_FILE
checks an https endpoint's certificate against that CA bundle. Errors print
{"ok": false, "exception": <class the SDK raised>, "code", "status", "message"}.
"""

import argparse
import json

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError


def main():
    p = argparse.ArgumentParser()
    p.add_argument("endpoint")
    p.add_argument("op", choices=["post", "get", "delete", "flood"])
    p.add_argument("id")
    p.add_argument("--data")
    p.add_argument("--hex")
    p.add_argument("--size", type=int)
    p.add_argument("--max", type=int, default=2000)
    p.add_argument("--access-key")
    p.add_argument("--secret")
    p.add_argument("--unsigned", action="store_true")
    p.add_argument("--verify")
    a = p.parse_args()

    config = Config(retries={"total_max_attempts": 1})
    if a.unsigned:
        config = config.merge(Config(signature_version=botocore.UNSIGNED))
    kwargs = {}
    if a.access_key:
        kwargs = {"aws_access_key_id": a.access_key, "aws_secret_access_key": a.secret}
    if a.verify:
        kwargs["verify"] = a.verify
    client = boto3.client("apigatewaymanagementapi", endpoint_url=a.endpoint, config=config, **kwargs)

    if a.data is not None:
        data = a.data.encode()
    elif a.hex is not None:
        data = bytes.fromhex(a.hex)
    else:
        data = b"x" * (a.size or 0)

    sent = 0
    try:
        if a.op == "post":
            r = client.post_to_connection(ConnectionId=a.id, Data=data)
            out = {}
        elif a.op == "get":
            r = client.get_connection(ConnectionId=a.id)
            out = {
                "connectedAt": r["ConnectedAt"].isoformat(),
                "lastActiveAt": r["LastActiveAt"].isoformat(),
                "identity": r["Identity"],
            }
        elif a.op == "delete":
            r = client.delete_connection(ConnectionId=a.id)
            out = {}
        else:
            for _ in range(a.max):
                client.post_to_connection(ConnectionId=a.id, Data=data)
                sent += 1
            r = {"ResponseMetadata": {}}
            out = {}
        meta = r["ResponseMetadata"]
        out.update(ok=True, sent=sent, status=meta.get("HTTPStatusCode"), requestId=meta.get("RequestId"))
    except ClientError as e:
        err = e.response.get("Error", {})
        out = {
            "ok": False,
            "sent": sent,
            "exception": type(e).__name__,
            "code": err.get("Code"),
            "message": err.get("Message"),
            "status": e.response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
        }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

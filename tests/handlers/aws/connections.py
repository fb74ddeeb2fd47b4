"""The chat's connection table, kept in a Redis set instead of DynamoDB: the set named by
`TABLE_NAME`, on the Redis at `REDIS_URL` (`redis://host:port`). A minimal RESP client on
the standard library, one short-lived connection per command."""

import os
import socket
from urllib.parse import urlparse


def command(*args):
    """Sends one command and returns the reply (str, int, list or None)."""
    url = urlparse(os.environ["REDIS_URL"])
    with socket.create_connection((url.hostname, url.port or 6379), timeout=5) as sock:
        out = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        sock.sendall(b"".join(out))
        return _read(sock.makefile("rb"))


def _read(f):
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode()
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read(f) for _ in range(n)]
    raise RuntimeError(f"unexpected reply {line!r}")


def put(connection_id):
    command("SADD", os.environ["TABLE_NAME"], connection_id)


def delete(connection_id):
    command("SREM", os.environ["TABLE_NAME"], connection_id)


def scan():
    return command("SMEMBERS", os.environ["TABLE_NAME"]) or []

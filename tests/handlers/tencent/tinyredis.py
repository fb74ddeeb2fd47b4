"""A tiny Redis client (RESP2 over a socket), standard library only: the one piece of
"persistent storage" the chat handlers share. `REDIS_URL` (default redis://127.0.0.1:6379)
names the server; `redis://host:port/db` selects a database.

    import tinyredis
    tinyredis.command("SADD", "chat:connections", connection_id)
"""

import os
import socket
from urllib.parse import urlparse


class RedisError(Exception):
    """An error reply from the server."""


def _address(url):
    parsed = urlparse(url)
    if parsed.scheme != "redis":
        raise ValueError(f"not a redis:// URL: {url}")
    db = (parsed.path or "/").strip("/")
    return parsed.hostname or "127.0.0.1", parsed.port or 6379, int(db) if db else 0


def _encode(args):
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if not isinstance(arg, bytes):
            arg = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def _read(f):
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed in the middle of a reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode()
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read(f) for _ in range(n)]
    raise ConnectionError(f"unexpected reply line {line!r}")


def command(*args, url=None, timeout=5.0):
    """Sends one command on a fresh connection and returns the reply (str, int, list, None)."""
    host, port, db = _address(url or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    with socket.create_connection((host, port), timeout=timeout) as sock:
        f = sock.makefile("rb")
        if db:
            sock.sendall(_encode(["SELECT", db]))
            _read(f)
        sock.sendall(_encode(args))
        return _read(f)

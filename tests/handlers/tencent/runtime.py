"""A tiny stand-in for Tencent SCF: serves one handler module's `main_handler(event, context)`
over HTTP, so that Switchboard's `tencent` dialect can call it as a function.

    python3 runtime.py register [--host 127.0.0.1] [--port 0]

The module is a file beside this one, exactly what would be deployed to SCF. Every POST
(any path) is one invocation: the request body is the event (JSON), the handler's return
value is the reply body (JSON; `null` when it returns nothing), status 200. An exception in
the handler is printed with its traceback and answered with 500 and an SCF-like error body.
The first line on stdout is the port, once the server listens; what the handler prints
follows. Standard library only.
"""

import argparse
import importlib
import json
import os
import sys
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def scf_context(function_name, timeout_ms=3000):
    """The context SCF passes to Python handlers (a dict), with the commonly read keys."""
    return {
        "callbackWaitsForEmptyEventLoop": True,
        "memory_limit_in_mb": 128,
        "time_limit_in_ms": timeout_ms,
        "request_id": str(uuid.uuid4()),
        "function_name": function_name,
        "function_version": "$LATEST",
        "namespace": "default",
        "tencentcloud_region": os.environ.get("TENCENTCLOUD_REGION", "ap-guangzhou"),
        "tencentcloud_appid": os.environ.get("TENCENTCLOUD_APPID", "0"),
        "tencentcloud_uin": os.environ.get("TENCENTCLOUD_UIN", "0"),
        "environ": ";".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.isupper()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="the handler module (a .py file beside runtime.py)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    # The user's modules (PYTHONPATH) first, the examples beside this file last: a user
    # module named like one of them (onconnect, register, default, ...) is the one served.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here] + [here]
    handler = importlib.import_module(args.module).main_handler

    class Invocation(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the gateway pools connections

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            started = time.monotonic()
            try:
                event = json.loads(raw)
                body = json.dumps(handler(event, scf_context(args.module)))
            except Exception as e:  # an unhandled error, as SCF reports one
                traceback.print_exc()
                return self.reply(500, json.dumps({
                    "errorCode": -1,
                    "errorMessage": f"{type(e).__name__}: {e}",
                    "duration": round((time.monotonic() - started) * 1000, 3),
                }))
            self.reply(200, body)

        def do_GET(self):
            self.reply(405, json.dumps({"errorCode": -1, "errorMessage": "POST an event"}))

        def reply(self, status, body):
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # no access log
            pass

    server = ThreadingHTTPServer((args.host, args.port), Invocation)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

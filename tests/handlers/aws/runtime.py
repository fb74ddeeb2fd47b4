"""A tiny stand-in for AWS Lambda: serves `lambda_handler(event, context)` of handler
modules over HTTP, so that Switchboard's `aws` dialect can call them as functions.

    python3 runtime.py onconnect ondisconnect sendmessage [--port 0]

Each module (a file beside this one) is served at `POST /<module>`; with a single module,
also at `POST /`. The request body is the event (JSON); the handler's return value is the
reply body (JSON; `null` when it returns nothing). An exception in the handler is logged
with its traceback and answered with 500 `{"errorMessage", "errorType"}`, as Lambda reports
an unhandled error. Prints `listening on 127.0.0.1:<port>` once ready. Standard library
only; the handler modules are exactly what would be deployed to Lambda.
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


class LambdaContext:
    """The attributes handlers commonly read from Lambda's context object."""

    def __init__(self, function_name, timeout_s=30):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = (
            f"arn:aws:lambda:{os.environ.get('AWS_REGION', 'us-east-1')}:000000000000:function:{function_name}"
        )
        self.memory_limit_in_mb = "128"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "switchboard"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="+")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    # The user's modules (PYTHONPATH) first, the examples beside this file last: a user
    # module named like one of them (onconnect, register, default, ...) is the one served.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here] + [here]
    handlers = {name: importlib.import_module(name).lambda_handler for name in args.modules}
    if len(handlers) == 1:
        handlers[""] = next(iter(handlers.values()))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the gateway pools connections

        def do_POST(self):
            name = self.path.split("?", 1)[0].strip("/")
            handler = handlers.get(name)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if handler is None:
                return self.reply(404, {"errorMessage": f"no handler at /{name}"})
            try:
                event = json.loads(raw)
                result = handler(event, LambdaContext(name or args.modules[0]))
            except Exception as e:  # an unhandled error, as Lambda reports it
                traceback.print_exc()
                return self.reply(500, {"errorMessage": str(e), "errorType": type(e).__name__})
            self.reply(200, result)

        def reply(self, status, value):
            body = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # no access log
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

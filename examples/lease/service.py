"""A fake external service for the lease example: reserve stock, charge a card, send a receipt.

It stands for the third parties a real order pipeline calls (an inventory
system, a payment provider, a mail service).  Like Stripe and most payment
APIs it deduplicates by an idempotency key: the first request with a given
Idempotency-Key header is executed and its response stored; a later request
with the same key and the same body gets the stored response back, with
"Idempotent-Replayed: true", and executes nothing; the same key with a
different body is refused (422).

    POST /reserve  {"sku": ..., "qty": ...}         -> {"reservation": "res_1"}
    POST /charge   {"card": ..., "amount": ...}     -> {"charge": "ch_2", "amount": ...}
    POST /email    {"to": ..., "charge": ...}       -> {"message": "msg_3"}
    GET  /log      -> {"executed": [...], "replayed": [...]}: every call executed, every
                      call answered from the stored response, in order

Run it with `python3 service.py [port]` (default: a free port); it prints
"listening http://127.0.0.1:PORT" once it accepts connections.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# phase -> (field of the response, prefix of the id it holds)
PHASES = {"reserve": ("reservation", "res"), "charge": ("charge", "ch"), "email": ("message", "msg")}


class Service:
    def __init__(self):
        self.lock = threading.Lock()
        self.stored = {}  # idempotency key -> (request body, response)
        self.executed = []
        self.replayed = []

    def call(self, phase, idem_key, body):
        """Return (http status, response, replayed)."""
        # One lock for everything: two concurrent requests with the same key
        # cannot both execute (a real service would lock per key).
        with self.lock:
            entry = {"idempotency_key": idem_key, "phase": phase, "body": body}
            if idem_key in self.stored:
                first_body, response = self.stored[idem_key]
                if first_body != body:
                    return 422, {"error": "idempotency key reused with another body"}, False
                self.replayed.append(entry)
                return 200, response, True
            field, prefix = PHASES[phase]
            response = {field: f"{prefix}_{len(self.executed) + 1}"}
            if phase == "charge":
                response["amount"] = body.get("amount")
            self.stored[idem_key] = (body, response)
            self.executed.append(entry)
            return 200, response, False

    def log(self):
        with self.lock:
            return {"executed": list(self.executed), "replayed": list(self.replayed)}


def make_handler(service):
    class Handler(BaseHTTPRequestHandler):
        def reply(self, code, body, replayed=False):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if replayed:
                self.send_header("Idempotent-Replayed", "true")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/log":
                self.reply(200, service.log())
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self):
            phase = self.path.lstrip("/")
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if phase not in PHASES:
                return self.reply(404, {"error": "not found"})
            idem_key = self.headers.get("Idempotency-Key")
            if not idem_key:
                return self.reply(400, {"error": "Idempotency-Key header required"})
            try:
                body = json.loads(raw)
            except ValueError:
                return self.reply(400, {"error": "body must be JSON"})
            self.reply(*service.call(phase, idem_key, body))

        def log_message(self, *args):  # quiet: the test prints what matters
            pass

    return Handler


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(Service()))
    print(f"listening http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

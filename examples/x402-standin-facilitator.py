#!/usr/bin/env python3
"""A stand-in x402 facilitator for trying fleetgate's payment gate without a chain.

It answers POST /verify with {"isValid": true, "payer": ...} and POST /settle with
{"success": true, "transaction": "0xstandin...", ...}, and prints every call. It checks no
signature and moves no money: use it to learn and test, never in front of a real route.

    python3 examples/x402-standin-facilitator.py [PORT]      (default 4020)
    STANDIN_VERIFY=invalid ...   answer every /verify with isValid: false
"""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERIFY = os.environ.get("STANDIN_VERIFY", "valid")
COUNT = 0


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global COUNT
        length = int(self.headers.get("content-length", "0"))
        body = json.loads(self.rfile.read(length) or b"null")
        payer = body["paymentPayload"]["payload"]["authorization"]["from"]
        network = body["paymentRequirements"]["network"]
        print(f"{self.path}: payer {payer}, requirements {json.dumps(body['paymentRequirements'])}", flush=True)
        if self.path == "/verify":
            answer = {"isValid": VERIFY == "valid", "payer": payer}
            if VERIFY != "valid":
                answer["invalidReason"] = "standin_invalid"
        elif self.path == "/settle":
            COUNT += 1
            answer = {"success": True, "transaction": f"0xstandin{COUNT:060x}", "network": network, "payer": payer}
        else:
            self.send_error(404)
            return
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 4020
    print(f"stand-in facilitator on http://127.0.0.1:{port} (verify: {VERIFY})", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()

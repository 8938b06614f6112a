"""A local fake of the few Stripe endpoints billing uses, for the real ``stripe`` library.

Threaded ``http.server`` on 127.0.0.1; answers Stripe-shaped JSON; honours ``Idempotency-Key``
(the same key returns the same object, as Stripe does). Tests point ``STRIPE_API_BASE`` at
``server.url``. Webhooks are not sent from here: tests sign events with the real library
(``sign_event``) and post them to the app.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import stripe


def _nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``a[b][0][c]=v`` form encoding back to nested dicts (lists stay dicts keyed "0", "1")."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        parts = key.replace("]", "").split("[")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


class FakeStripe:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, Any], str | None]] = []
        self.objects: dict[str, dict[str, Any]] = {}
        self.idempotent: dict[str, dict[str, Any]] = {}
        self.reject_transfers = False
        self.unavailable = False
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeStripe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def calls(self, path: str) -> list[dict[str, Any]]:
        return [params for method, p, params, _ in self.requests if p == path and method == "POST"]

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}{secrets.token_hex(4)}"

    def _create(self, path: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        now = int(time.time())
        if path == "/v1/checkout/sessions":
            item = params["line_items"]["0"]
            amount = int(item["price_data"]["unit_amount"]) * int(item.get("quantity", 1))
            sid = self._new_id("cs_test")
            obj = {
                "id": sid,
                "object": "checkout.session",
                "amount_total": amount,
                "currency": item["price_data"]["currency"],
                "client_reference_id": params.get("client_reference_id"),
                "metadata": params.get("metadata", {}),
                "mode": params.get("mode"),
                "payment_status": "unpaid",
                "status": "open",
                "payment_intent": None,
                "url": f"https://checkout.stripe.test/c/pay/{sid}",
                "created": now,
            }
        elif path == "/v1/accounts":
            obj = {
                "id": self._new_id("acct"),
                "object": "account",
                "type": params.get("type"),
                "metadata": params.get("metadata", {}),
            }
        elif path == "/v1/account_links":
            obj = {
                "object": "account_link",
                "url": f"https://connect.stripe.test/setup/{params['account']}",
                "created": now,
            }
        elif path == "/v1/transfers":
            if self.reject_transfers:
                return 400, {
                    "error": {
                        "type": "invalid_request_error",
                        "message": "Insufficient funds in Stripe account.",
                    }
                }
            obj = {
                "id": self._new_id("tr"),
                "object": "transfer",
                "amount": int(params["amount"]),
                "currency": params["currency"],
                "destination": params["destination"],
                "metadata": params.get("metadata", {}),
                "reversed": False,
                "amount_reversed": 0,
                "created": now,
            }
        else:
            return 404, {
                "error": {
                    "type": "invalid_request_error",
                    "message": f"Unrecognized request URL (POST: {path})",
                }
            }
        if "id" in obj:
            self.objects[obj["id"]] = obj
        return 200, obj

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.send_header("Request-Id", "req_fake")
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                params = _nest(parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True))
                key = self.headers.get("Idempotency-Key")
                with fake._lock:
                    fake.requests.append(("POST", self.path, params, key))
                    if fake.unavailable:
                        self._reply(503, {"error": {"type": "api_error", "message": "Service unavailable"}})
                        return
                    if key and key in fake.idempotent:
                        self._reply(200, fake.idempotent[key])
                        return
                    status, body = fake._create(self.path, params)
                    if key and status == 200:
                        fake.idempotent[key] = body
                self._reply(status, body)

            def do_GET(self) -> None:
                object_id = self.path.rstrip("/").rsplit("/", 1)[-1]
                with fake._lock:
                    fake.requests.append(("GET", self.path, {}, None))
                    obj = fake.objects.get(object_id)
                if obj is None:
                    self._reply(
                        404, {"error": {"type": "invalid_request_error", "message": "No such object"}}
                    )
                else:
                    self._reply(200, obj)

        return Handler


_event_ids = itertools.count(1)


def event_payload(event_type: str, obj: dict[str, Any], *, event_id: str | None = None) -> bytes:
    event = {
        "id": event_id or f"evt_test_{next(_event_ids):08d}{secrets.token_hex(3)}",
        "object": "event",
        "type": event_type,
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": obj},
    }
    return json.dumps(event).encode()


def sign_event(payload: bytes, secret: str) -> str:
    """A ``Stripe-Signature`` header made by the real library."""
    return stripe.WebhookSignature.generate_signature_header(payload.decode(), secret)

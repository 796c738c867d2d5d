"""A fake embedding API over real HTTP on loopback, enforcing the rules of the real ones.

Serves AI21 Embed (`POST /embed`) and the OpenAI-compatible route (`POST /v1/embeddings`).
It checks the key, at most 200 texts and every text under 2,000 characters (AI21), and the
`type` values; it can throttle (429 + Retry-After past a requests-per-minute limit), fail a
seeded fraction of requests with 429/503, refuse texts containing a marker (422), add
latency, echo the request in an error (as careless APIs do), and logs every request so tests can assert on what was sent.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np


def fake_vector(text: str, dimension: int) -> list[float]:
    """Deterministic, and equal texts give equal vectors."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    return np.random.default_rng(seed).standard_normal(dimension).round(6).tolist()


@dataclass
class Request:
    route: str
    authorization: str | None
    body: Any
    status: int
    at: float


@dataclass
class FakeEmbedAPI:
    key: str = "test-key"
    dimension: int = 64
    #: Per model (the OpenAI route's `model`), a dimension other than `dimension`.
    dimensions: dict[str, int] = field(default_factory=dict)
    max_texts: int = 200
    max_chars: int = 2000
    #: 429 + Retry-After beyond this many requests in any 60 s (None: no limit).
    requests_per_minute: int | None = None
    retry_after: str = "1"
    #: Fraction of requests answered with a random one of `fail_statuses`.
    fail_rate: float = 0.0
    fail_statuses: tuple[int, ...] = (429, 503)
    #: Answer every request with this status while set (e.g. 503 for an outage).
    outage: int | None = None
    latency: float = 0.0
    #: Answer every request with this status and a body quoting its headers and body.
    echo: int | None = None
    echo_as_text: bool = False
    reject_marker: str | None = None
    shuffle_openai: bool = False
    seed: int = 0
    log: list[Request] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(self.seed)
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeEmbedAPI:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                api._handle(self)

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def embedder(self, **overrides: Any) -> dict[str, Any]:
        """syncd's `embedder:` section for this API, by the AI21 route."""
        return {
            "provider": "ai21",
            "model": "m",
            "base_url": self.url,
            "api_key": self.key,
        } | overrides

    def texts(self, route: str = "/embed") -> list[str]:
        """Every text sent in a successful request to the route."""
        out = []
        for r in self.ok(route):
            out.extend(r.body["texts"] if route == "/embed" else r.body["input"])
        return out

    def ok(self, route: str = "/embed") -> list[Request]:
        return [r for r in self.log if r.route == route and r.status == 200]

    # -- serving ----------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                time.sleep(self.latency)
            raw = h.rfile.read(int(h.headers.get("Content-Length", 0)))
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            if self.echo:
                status, headers = self.echo, {}
                answer = {"detail": f"cannot use request {dict(h.headers)} {raw.decode()}"}
            else:
                status, answer, headers = self._answer(h.path, h.headers.get("Authorization"), body)
            with self._lock:
                self.log.append(
                    Request(h.path, h.headers.get("Authorization"), body, status, time.monotonic())
                )
            text = self.echo and self.echo_as_text
            data = (answer["detail"] if text else json.dumps(answer)).encode()
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Type", "text/plain" if text else "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, route: str, auth: str | None, body: Any) -> tuple[int, Any, dict[str, str]]:
        if route not in ("/embed", "/v1/embeddings"):
            return 404, {"detail": "not found"}, {}
        if auth != f"Bearer {self.key}":
            return 401, {"detail": "Invalid API key"}, {}
        if self.outage:
            headers = {"Retry-After": self.retry_after} if self.outage == 429 else {}
            return self.outage, {"detail": "outage"}, headers
        if self.requests_per_minute is not None:
            now = time.monotonic()
            with self._lock:
                recent = [r for r in self.log if r.status == 200 and now - r.at < 60]
            if len(recent) >= self.requests_per_minute:
                return 429, {"detail": "Too many requests"}, {"Retry-After": self.retry_after}
        if self.fail_rate and self._rng.random() < self.fail_rate:
            status = self._rng.choice(self.fail_statuses)
            return (
                status,
                {"detail": "injected failure"},
                {"Retry-After": "0"} if status == 429 else {},
            )
        texts, problem = self._texts(route, body)
        if problem:
            return 422, {"detail": problem}, {}
        if self.reject_marker and any(self.reject_marker in t for t in texts):
            return 422, {"detail": f"text contains forbidden content {self.reject_marker!r}"}, {}
        dimension = self.dimensions.get(body.get("model"), self.dimension)
        vectors = [fake_vector(t, dimension) for t in texts]
        if route == "/embed":
            return 200, {"id": "req-1", "results": [{"embedding": v} for v in vectors]}, {}
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        if self.shuffle_openai:
            self._rng.shuffle(data)
        return 200, {"object": "list", "data": data, "model": body.get("model")}, {}

    def _texts(self, route: str, body: Any) -> tuple[list[str], str | None]:
        if not isinstance(body, dict):
            return [], "body must be a JSON object"
        texts = body.get("texts") if route == "/embed" else body.get("input")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts) or not texts:
            return [], "texts must be a non-empty list of strings"
        if route == "/embed":
            if body.get("type") not in ("segment", "query"):
                return [], f"type must be 'segment' or 'query', got {body.get('type')!r}"
            if len(texts) > self.max_texts:
                return [], f"at most {self.max_texts} texts, got {len(texts)}"
            too_long = [len(t) for t in texts if len(t) >= self.max_chars]
            if too_long:
                return (
                    [],
                    f"texts must be shorter than {self.max_chars} characters, got {too_long[0]}",
                )
        elif not body.get("model"):
            return [], "model is required"
        return texts, None

"""A stand-in for a Qdrant server in tests: Qdrant's REST API on loopback, in its own process.

What it is: a small HTTP server answering the routes of Qdrant's REST API that qdrant-client
sends for syncd's operations, each parsed with qdrant-client's own REST models and executed by
qdrant-client's local mode (`QdrantClient(path=...)`), the client's in-process implementation
of Qdrant's semantics. Replies use Qdrant's envelope (`{"result", "status": "ok", "time"}`),
errors its shape (4xx/5xx with `{"status": {"error": ...}}`). It runs as its own process, so
the CLI, `syncd run` and tests can share one "server", and it can be stopped (or killed) and
started again on the same data directory to play Qdrant going down and coming back.

What it is not: Qdrant. Search is the local engine's exact brute-force search, not HNSW;
payload indexes are recorded but change nothing; `wait=false` still waits; no gRPC, no
clustering, shards, snapshots, telemetry or optimizer status; no auth beyond one api-key
(`api-key` or `Authorization: Bearer` header; missing 401, wrong 403; `/`, `/healthz`,
`/livez` and `/readyz` stay open, as on Qdrant); durability is the local mode's SQLite, one
commit per point, in WAL mode without fsync: an answered write survives the stand-in being
killed, not the machine losing power. One request executes at a time. Unsupported routes answer
404 naming the route, so a new client call shows up as a clear failure rather than a quiet one.

    python tests/qdrant_standin.py --path DIR [--port 0] [--host 127.0.0.1]

prints its URL on the first line of stdout; the api-key comes from QDRANT__SERVICE__API_KEY,
the variable Qdrant itself reads. SIGTERM or SIGINT stops it cleanly. Tests start it with
`standin_process.StandinProcess` (fixture `make_standin` in conftest.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydantic
from pydantic_core import to_jsonable_python
from qdrant_client import QdrantClient
from qdrant_client.http import models as m

API_KEY_VARIABLE = "QDRANT__SERVICE__API_KEY"
_OPEN_ROUTES = ("/", "/healthz", "/livez", "/readyz")


@cache
def _adapter(kind: Any) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(kind)


def parse(kind: Any, body: Any) -> Any:
    return _adapter(kind).validate_python(body if body is not None else {})


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LocalServer(QdrantClient):
    """Local mode, plus the payload indexes a server reports in a collection's info.

    Local mode accepts payload indexes but keeps none; syncd checks its indexes on a server,
    so they are recorded here, in a file beside local mode's own, to survive restarts.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path=path)
        self._index_file = Path(path) / "standin-payload-indexes.json"
        self._indexes: dict[str, dict[str, Any]] = (
            json.loads(self._index_file.read_text()) if self._index_file.exists() else {}
        )
        for name in self._client.collections:
            self._commit_without_fsync(name)

    def _commit_without_fsync(self, collection: str) -> None:
        # Local mode commits each point on its own; with fsync that is ~75 points/s on a busy
        # disk. WAL without fsync keeps every answered write through a kill -9 (not a power cut).
        connection = self._client.collections[collection].storage.storage
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")

    def create_collection(self, collection_name: str, **kwargs: Any) -> bool:
        created = super().create_collection(collection_name, **kwargs)
        self._commit_without_fsync(collection_name)
        return created

    def _collection_name(self, name: str) -> str:
        aliases = {a.alias_name: a.collection_name for a in self.get_aliases().aliases}
        return aliases.get(name, name)

    def _record(self, collection: str, field: str, schema: Any) -> None:
        fields = self._indexes.setdefault(self._collection_name(collection), {})
        if schema is None:
            fields.pop(field, None)
        else:
            fields[field] = to_jsonable_python(schema)
        self._index_file.write_text(json.dumps(self._indexes))

    def create_payload_index(self, collection_name: str, field_name: str, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            # "indexes have no effect in local mode": the module docstring says so already
            warnings.simplefilter("ignore", UserWarning)
            result = super().create_payload_index(collection_name, field_name, **kwargs)
        self._record(collection_name, field_name, kwargs["field_schema"])
        return result

    def delete_payload_index(self, collection_name: str, field_name: str, **kwargs: Any) -> Any:
        result = super().delete_payload_index(collection_name, field_name, **kwargs)
        self._record(collection_name, field_name, None)
        return result

    def delete_collection(self, collection_name: str, **kwargs: Any) -> bool:
        self._indexes.pop(collection_name, None)
        self._index_file.write_text(json.dumps(self._indexes))
        return super().delete_collection(collection_name, **kwargs)

    def get_collection(self, collection_name: str, **kwargs: Any) -> m.CollectionInfo:
        info = super().get_collection(collection_name, **kwargs)
        schema = {}
        for field, raw in self._indexes.get(self._collection_name(collection_name), {}).items():
            params = parse(m.PayloadFieldSchema, raw)
            has_field = m.Filter(must_not=[m.IsEmptyCondition(is_empty=m.PayloadField(key=field))])
            schema[field] = m.PayloadIndexInfo(
                data_type=m.PayloadSchemaType(getattr(params, "type", params)),
                params=None if isinstance(params, m.PayloadSchemaType) else params,
                points=self.count(collection_name, count_filter=has_field).count,
            )
        return info.model_copy(update={"payload_schema": schema})


# -- routes: (client, collection name or field from the path, JSON body) -> result -----------

Handler = Callable[[QdrantClient, list[str], Any], Any]


def _collection_config(req: m.CreateCollection | m.UpdateCollection) -> dict[str, Any]:
    # hnsw, optimizer, quantization and sharding settings mean nothing to local mode
    return {
        "vectors_config": req.vectors,
        "sparse_vectors_config": req.sparse_vectors,
        "metadata": req.metadata,
    }


def _create_collection(c: QdrantClient, names: list[str], body: Any) -> bool:
    return c.create_collection(names[0], **_collection_config(parse(m.CreateCollection, body)))


def _update_collection(c: QdrantClient, names: list[str], body: Any) -> bool:
    return c.update_collection(names[0], **_collection_config(parse(m.UpdateCollection, body)))


def _upsert(c: QdrantClient, names: list[str], body: Any) -> m.UpdateResult:
    req = parse(m.PointInsertOperations, body)
    points = req.points if isinstance(req, m.PointsList) else req.batch
    return c.upsert(names[0], points, update_filter=req.update_filter, update_mode=req.update_mode)


def _retrieve(c: QdrantClient, names: list[str], body: Any) -> list[m.Record]:
    req = parse(m.PointRequest, body)
    return c.retrieve(
        names[0],
        req.ids,
        with_payload=True if req.with_payload is None else req.with_payload,
        with_vectors=req.with_vector or False,
    )


def _scroll(c: QdrantClient, names: list[str], body: Any) -> m.ScrollResult:
    req = parse(m.ScrollRequest, body)
    points, offset = c.scroll(
        names[0],
        scroll_filter=req.filter,
        limit=req.limit or 10,
        order_by=req.order_by,
        offset=req.offset,
        with_payload=True if req.with_payload is None else req.with_payload,
        with_vectors=req.with_vector or False,
    )
    return m.ScrollResult(points=points, next_page_offset=offset)


def _count(c: QdrantClient, names: list[str], body: Any) -> m.CountResult:
    req = parse(m.CountRequest, body)
    return c.count(names[0], count_filter=req.filter, exact=True)


def _facet(c: QdrantClient, names: list[str], body: Any) -> m.FacetResponse:
    req = parse(m.FacetRequest, body)
    return c.facet(names[0], req.key, facet_filter=req.filter, limit=req.limit or 10, exact=True)


def _query(c: QdrantClient, collection: str, req: m.QueryRequest) -> m.QueryResponse:
    return c.query_points(
        collection,
        query=req.query,
        using=req.using,
        prefetch=req.prefetch,
        query_filter=req.filter,
        search_params=req.params,
        limit=req.limit or 10,
        offset=req.offset,
        with_payload=req.with_payload or False,
        with_vectors=req.with_vector or False,
        score_threshold=req.score_threshold,
        lookup_from=req.lookup_from,
    )


def _query_points(c: QdrantClient, names: list[str], body: Any) -> m.QueryResponse:
    return _query(c, names[0], parse(m.QueryRequest, body))


def _query_batch(c: QdrantClient, names: list[str], body: Any) -> list[m.QueryResponse]:
    return [_query(c, names[0], r) for r in parse(m.QueryRequestBatch, body).searches]


def _search(c: QdrantClient, names: list[str], body: Any) -> list[m.ScoredPoint]:
    """The legacy search route; qdrant-client >= 1.16 dropped its model, so it maps to query."""
    if not isinstance(body, dict) or "vector" not in body:
        raise HTTPError(400, "Format error in JSON body: missing field `vector`")
    body = dict(body)
    vector = body.pop("vector")
    if isinstance(vector, dict):
        body["using"], vector = vector.get("name"), vector.get("vector")
    return _query(c, names[0], parse(m.QueryRequest, body | {"query": vector})).points


def _delete_points(c: QdrantClient, names: list[str], body: Any) -> m.UpdateResult:
    return c.delete(names[0], parse(m.PointsSelector, body))


def _create_index(c: QdrantClient, names: list[str], body: Any) -> m.UpdateResult:
    req = parse(m.CreateFieldIndex, body)
    return c.create_payload_index(names[0], req.field_name, field_schema=req.field_schema)


def _change_aliases(c: QdrantClient, names: list[str], body: Any) -> bool:
    return c.update_collection_aliases(parse(m.ChangeAliasesOperation, body).actions)


_NAME = r"([^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    (method, re.compile(f"^{pattern.replace('{}', _NAME)}$"), handler)
    for method, pattern, handler in [
        ("GET", "/collections", lambda c, n, b: c.get_collections()),
        ("GET", "/aliases", lambda c, n, b: c.get_aliases()),
        ("POST", "/collections/aliases", _change_aliases),
        ("GET", "/collections/{}/aliases", lambda c, n, b: c.get_collection_aliases(n[0])),
        (
            "GET",
            "/collections/{}/exists",
            lambda c, n, b: m.CollectionExistence(exists=c.collection_exists(n[0])),
        ),
        ("GET", "/collections/{}", lambda c, n, b: c.get_collection(n[0])),
        ("PUT", "/collections/{}", _create_collection),
        ("PATCH", "/collections/{}", _update_collection),
        ("DELETE", "/collections/{}", lambda c, n, b: c.delete_collection(n[0])),
        ("PUT", "/collections/{}/index", _create_index),
        ("DELETE", "/collections/{}/index/{}", lambda c, n, b: c.delete_payload_index(*n)),
        ("PUT", "/collections/{}/points", _upsert),
        ("POST", "/collections/{}/points", _retrieve),
        ("POST", "/collections/{}/points/delete", _delete_points),
        ("POST", "/collections/{}/points/scroll", _scroll),
        ("POST", "/collections/{}/points/count", _count),
        ("POST", "/collections/{}/points/query", _query_points),
        ("POST", "/collections/{}/points/query/batch", _query_batch),
        ("POST", "/collections/{}/points/search", _search),
        ("POST", "/collections/{}/facet", _facet),
    ]
]


def _route(method: str, path: str) -> tuple[Handler, list[str]]:
    for verb, pattern, handler in ROUTES:
        if verb == method and (found := pattern.match(path)):
            return handler, list(found.groups())
    raise HTTPError(404, f"Not found: the Qdrant stand-in does not serve {method} {path}")


def _status_of(error: Exception) -> int:
    if isinstance(error, HTTPError):
        return error.status
    if isinstance(error, (pydantic.ValidationError, json.JSONDecodeError)):
        return 400
    if isinstance(error, ValueError):
        # the local engine raises ValueError for both; Qdrant answers 404 and 400
        return 404 if "not found" in str(error).lower() else 400
    return 500


# -- the server ----------------------------------------------------------------------------


class Standin:
    """The engine behind one HTTP server: every call runs on one thread, one at a time.

    Local mode's SQLite connections belong to the thread that opened them and its
    collections are not safe to share, so requests queue for a single worker.
    """

    def __init__(self, path: str, api_key: str | None) -> None:
        self.api_key = api_key
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-local")
        self.client = self._worker.submit(LocalServer, path).result()
        self.version = self.client.info()

    def call(self, method: str, path: str, body: Any) -> Any:
        handler, names = _route(method, path)
        return self._worker.submit(handler, self.client, names, body).result()

    def refusal(self, headers: Any) -> HTTPError | None:
        if self.api_key is None:
            return None
        bearer = headers.get("Authorization", "")
        given = headers.get("api-key") or (bearer[7:] if bearer.startswith("Bearer ") else None)
        if given is None:
            return HTTPError(401, "Must provide an API key or an Authorization bearer token")
        return None if given == self.api_key else HTTPError(403, "Invalid API key or JWT")

    def close(self) -> None:
        self._worker.submit(self.client.close).result()
        self._worker.shutdown()


def make_server(standin: Standin, host: str, port: int) -> ThreadingHTTPServer:
    class RequestHandler(BaseHTTPRequestHandler):
        # keep-alive, as httpx's pool expects of Qdrant
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            started = time.perf_counter()
            url = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if url.path in _OPEN_ROUTES and self.command == "GET":
                # Qdrant answers these bare, outside the envelope: / with its version as JSON
                if url.path == "/":
                    self._send(200, standin.version.model_dump_json().encode(), "application/json")
                else:
                    self._send(200, f"{url.path[1:]} check passed".encode(), "text/plain")
                return
            try:
                refused = standin.refusal(self.headers)
                if refused:
                    raise refused
                body = json.loads(raw) if raw else None
                result = standin.call(self.command, url.path, body)
                status, reply = 200, {"result": result, "status": "ok"}
            except Exception as error:
                status, reply = _status_of(error), {"status": {"error": str(error)}}
                if status == 500:
                    print(f"standin: {self.command} {url.path}: {error!r}", file=sys.stderr)
            reply["time"] = time.perf_counter() - started
            data = json.dumps(to_jsonable_python(reply, fallback=_tolist)).encode()
            self._send(status, data, "application/json")

        def _send(self, status: int, data: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer((host, port), RequestHandler)
    server.daemon_threads = True
    return server


def _tolist(value: Any) -> Any:
    # numpy arrays and scalars out of the local engine
    return value.tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", required=True, help="data directory (local mode's storage)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        parser.error("the stand-in only listens on loopback")
    standin = Standin(args.path, os.environ.get(API_KEY_VARIABLE) or None)
    server = make_server(standin, args.host, args.port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    print(f"http://{host}:{port}", flush=True)
    stop.wait()
    server.shutdown()
    server.server_close()
    standin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Redis Streams source against a real redis-server, driven through `syncd run`."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import points
from daemon_process import Daemon, get, wait_until

from syncd.chunking import chunk_text
from syncd.config import load_config
from syncd.state import open_state
from syncd.store import point_id

STREAM = "syncd:docs"


def stream_source(redis_server, batch: int) -> dict:
    """The queue source of these tests, read `batch` entries at a time."""
    return {
        "name": "cms",
        "type": "redis",
        "url": redis_server.url,
        "stream": STREAM,
        "claim_idle_seconds": 1,
        "batch": batch,
    }


@pytest.fixture
def queue(redis_server, make_daemon) -> Daemon:
    return make_daemon(sources=[stream_source(redis_server, 200)])


def stream_status(daemon: Daemon) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "syncd", "status", "--json", "-c", str(daemon.config)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)["sources"][0]


def drained(daemon: Daemon) -> bool:
    s = stream_status(daemon)["stream"]
    return s["lag"] == 0 and s["pending"] == 0


def assert_store_is(daemon: Daemon, documents: dict[str, tuple[str, dict]]) -> None:
    """The collection holds exactly the chunks of these documents (id → text, metadata)."""
    settings = load_config(daemon.config)
    want = {}
    for doc_id, (text, metadata) in documents.items():
        chunks = chunk_text(text, settings.chunking.max_chars, settings.chunking.overlap_chars)
        for i, c in enumerate(chunks):
            want[point_id("cms", doc_id, i)] = {
                "path": doc_id,
                "text": c.text,
                "metadata": metadata,
                "chunk_count": len(chunks),
                "source": "cms",
            }
    got = points(settings)
    assert got.keys() == want.keys()
    for pid, fields in want.items():
        assert {k: got[pid][k] for k in fields} == fields


def publish(client, ops: list[dict]) -> None:
    pipe = client.pipeline()
    for op in ops:
        pipe.xadd(STREAM, op)
    pipe.execute()


def mixed_ops(n: int, ids: int, seed: int) -> tuple[list[dict], dict[str, tuple[str, dict]]]:
    """n entries over `ids` documents: upserts, rewrites of the same ids, deletes."""
    rng = random.Random(seed)
    ops, final = [], {}
    for i in range(n):
        doc = f"doc-{rng.randrange(ids)}"
        if rng.random() < 0.15:
            ops.append({"op": "delete", "id": doc})
            final.pop(doc, None)
        else:
            text = f"Document {doc}, revision {i}: a note about {rng.choice(['tea', 'rain', 'maps', 'owls'])}."
            meta = {"rev": i, "tags": [rng.choice(["a", "b"])]}
            ops.append({"op": "upsert", "id": doc, "text": text, "metadata": json.dumps(meta)})
            final[doc] = (text, meta)
    return ops, final


def test_backlog_and_5000_mixed_entries_end_exactly_as_the_final_documents(queue, redis_server):
    client = redis_server.client()
    ops, final = mixed_ops(5000, 1500, seed=1)
    publish(client, ops[:2000])  # a backlog written before syncd first ran
    queue.start().wait_ready()
    publish(client, ops[2000:])
    wait_until(lambda: drained(queue), 120, "stream drained")
    assert queue.stop() == 0
    assert_store_is(queue, final)
    assert client.xlen(f"{STREAM}:dead") == 0


def test_unchanged_upsert_embeds_nothing(queue, redis_server):
    client = redis_server.client()
    publish(client, [{"op": "upsert", "id": "a", "text": "Same text."}])
    queue.start().wait_ready()
    wait_until(lambda: drained(queue), 30, "first")
    _, metrics_before = get(queue.url("/metrics"))
    publish(client, [{"op": "upsert", "id": "a", "text": "Same text."}])
    wait_until(lambda: drained(queue), 30, "second")
    _, metrics_after = get(queue.url("/metrics"))
    line = next(
        x for x in metrics_after.splitlines() if x.startswith("syncd_chunks_embedded_total")
    )
    assert line in metrics_before  # the counter did not move
    wait_until(
        lambda: 'syncd_stream_lag{source="cms"} 0.0' in get(queue.url("/metrics"))[1], 15, "lag"
    )
    _, metrics_now = get(queue.url("/metrics"))
    for name in ("syncd_stream_pending", "syncd_dead_letters"):
        assert f'{name}{{source="cms"}} 0.0' in metrics_now
    assert queue.stop() == 0
    assert_store_is(queue, {"a": ("Same text.", {})})


def test_malformed_entries_go_to_the_dead_letter_stream_and_others_flow(queue, redis_server):
    client = redis_server.client()
    publish(
        client,
        [
            {"op": "upsert", "id": "good", "text": "A good document."},
            {"op": "rename", "id": "x"},
            {"op": "upsert", "text": "no id"},
            {"op": "upsert", "id": "badmeta", "text": "t", "metadata": "[1, 2]"},
            {"op": "upsert", "id": "nometa", "text": "Another good one.", "metadata": "{not json"},
        ],
    )
    queue.start().wait_ready()
    wait_until(lambda: drained(queue), 30, "drained")
    dead = client.xrange(f"{STREAM}:dead")
    reasons = sorted(fields["_reason"] for _, fields in dead)
    assert len(reasons) == 4
    assert any("op must be" in r for r in reasons) and any(
        "missing field 'id'" in r for r in reasons
    )
    assert any("JSON object" in r for r in reasons) and any("not JSON" in r for r in reasons)
    assert stream_status(queue)["stream"]["dead"] == 4
    assert queue.stop() == 0
    assert_store_is(queue, {"good": ("A good document.", {})})


def test_kill_9_mid_stream_then_restart_loses_and_duplicates_nothing(queue, redis_server):
    client = redis_server.client()
    ops, final = mixed_ops(3000, 800, seed=2)
    publish(client, ops)
    rng = random.Random(3)
    for _ in range(3):
        queue.start()
        time.sleep(rng.uniform(1.5, 4.0))
        queue.stop(signal.SIGKILL)
    queue.start().wait_ready(timeout=60)
    wait_until(lambda: drained(queue), 120, "drained after crashes")
    assert queue.stop() == 0
    assert_store_is(queue, final)


def test_redis_restart_mid_run_resumes_by_itself(queue, redis_server):
    client = redis_server.client()
    publish(client, [{"op": "upsert", "id": "before", "text": "Written before the restart."}])
    queue.start().wait_ready()
    wait_until(lambda: drained(queue), 30, "first")
    redis_server.stop()
    time.sleep(2)
    redis_server.start()
    client = redis_server.client()
    publish(client, [{"op": "upsert", "id": "after", "text": "Written after the restart."}])
    wait_until(lambda: drained(queue), 60, "after restart")
    assert queue.stop() == 0
    assert_store_is(
        queue,
        {
            "before": ("Written before the restart.", {}),
            "after": ("Written after the restart.", {}),
        },
    )


def test_resync_of_a_queue_source_repairs_the_store_from_sqlite(queue, redis_server):
    import qdrant_edge as qe

    client = redis_server.client()
    publish(client, [{"op": "upsert", "id": f"d{i}", "text": f"Note {i}."} for i in range(5)])
    queue.start().wait_ready()
    wait_until(lambda: drained(queue), 30, "drained")
    assert queue.stop() == 0
    settings = load_config(queue.config)
    shard = qe.EdgeShard.load(str(settings.qdrant.path / settings.qdrant.collection))
    shard.update(
        qe.UpdateOperation.delete_points_by_filter(
            qe.Filter(must=[qe.FieldCondition("path", match=qe.MatchValue("d3"))])
        )
    )
    shard.close()
    redis_server.stop()  # resync reads nothing from Redis
    out = subprocess.run(
        [sys.executable, "-m", "syncd", "resync", "--json", "-c", str(queue.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(out.stdout)
    assert (out.returncode, report["updated"], report["texts_embedded"]) == (0, 1, 0)
    assert_store_is(queue, {f"d{i}": (f"Note {i}.", {}) for i in range(5)})


def test_text_the_embedder_rejects_is_dead_lettered_at_the_first_rejection(
    redis_server, make_daemon, fake_embed
):
    fake_embed.reject_marker = "FORBIDDEN"
    source = {
        "name": "cms",
        "type": "redis",
        "url": redis_server.url,
        "stream": STREAM,
        "claim_idle_seconds": 0.5,
        "max_deliveries": 3,
    }
    queue = make_daemon(sources=[source], embedder=fake_embed.embedder(requests_per_minute=60_000))
    client = redis_server.client()
    publish(
        client,
        [
            {"op": "upsert", "id": "bad", "text": "This text has FORBIDDEN words."},
            {"op": "upsert", "id": "good", "text": "This one is fine."},
        ],
    )
    queue.start().wait_ready()
    wait_until(lambda: drained(queue), 60, "drained")
    ((_, dead),) = client.xrange(f"{STREAM}:dead")
    assert dead["id"] == "bad" and "forbidden content" in dead["_reason"]
    # Rejected once is rejected always: no waiting for max_deliveries redeliveries.
    assert int(dead["_deliveries"]) == 1
    assert queue.stop() == 0
    assert_store_is(queue, {"good": ("This one is fine.", {})})


def test_hostile_entries_are_dead_lettered_and_the_consumer_goes_on(queue, redis_server):
    import redis

    raw = redis.Redis.from_url(redis_server.url)  # bytes in, bytes out: no decoding here
    deep = "[" * 100_000 + "]" * 100_000
    deep_but_short = "[" * 20_000 + "]" * 20_000
    hostile = [
        {b"op": b"upsert", b"id": b"badutf8", b"text": b"caf\xe9 \xff\xfe"},
        {b"op": b"upsert", b"id": b"nan", b"text": b"t", b"metadata": b'{"score": NaN}'},
        {b"op": b"upsert", b"id": b"deep", b"text": b"t", b"metadata": f'{{"a": {deep}}}'.encode()},
        {
            b"op": b"upsert",
            b"id": b"nested",
            b"text": b"t",
            b"metadata": f'{{"a": {deep_but_short}}}'.encode(),
        },
        {
            b"op": b"upsert",
            b"id": b"wide",
            b"text": b"t",
            b"metadata": b'{"a": [' + b"1," * 40_000 + b"1]}",
        },
        {b"op": b"upsert", b"id": b"ok1", b"text": b"An ordinary document."},
    ]
    for fields in hostile:
        raw.xadd(STREAM, fields)
    queue.start().wait_ready()
    wait_until(lambda: drained(queue), 60, "drained")
    dead = {f[b"id"]: f for _, f in raw.xrange(f"{STREAM}:dead")}
    assert set(dead) == {b"badutf8", b"nan", b"deep", b"nested", b"wide"}
    assert b"UTF-8" in dead[b"badutf8"][b"_reason"]
    assert dead[b"badutf8"][b"text"] == b"caf\xe9 \xff\xfe"  # the bytes as they came
    assert b"NaN" in dead[b"nan"][b"_reason"]
    assert b"longer than" in dead[b"deep"][b"_reason"]
    assert b"nested too deeply" in dead[b"nested"][b"_reason"]
    assert b"longer than" in dead[b"wide"][b"_reason"]
    # Still consuming, and ready, after all of them.
    raw.xadd(STREAM, {b"op": b"upsert", b"id": b"ok2", b"text": b"Written after the hostile ones."})
    wait_until(lambda: drained(queue), 60, "drained again")
    assert get(queue.url("/readyz"))[0] == 200
    assert queue.stop() == 0
    assert "consumer_stopped" not in queue.stderr
    assert_store_is(
        queue,
        {"ok1": ("An ordinary document.", {}), "ok2": ("Written after the hostile ones.", {})},
    )


def api_queue(redis_server, make_daemon, fake_embed, batch: int, *also: dict) -> Daemon:
    """A queue source read `batch` entries at a time (and the sources `also`), embedded
    by the fake API."""
    embedder = fake_embed.embedder(requests_per_minute=60_000, batch_size=200, max_concurrency=2)
    return make_daemon(sources=[stream_source(redis_server, batch), *also], embedder=embedder)


def test_reads_of_40_entries_fill_requests_of_200_texts(redis_server, make_daemon, fake_embed):
    queue = api_queue(redis_server, make_daemon, fake_embed, batch=40)
    client = redis_server.client()
    publish(
        client, [{"op": "upsert", "id": f"d{i}", "text": f"Note number {i}."} for i in range(600)]
    )
    queue.start().wait_ready()
    wait_until(lambda: drained(queue), 120, "drained")
    assert queue.stop() == 0
    sizes = [len(r.body["texts"]) for r in fake_embed.ok() if r.body["type"] == "segment"]
    assert sum(sizes) == 600
    assert sizes == [200, 200, 200]  # one read at a time sent 15 requests of 40


def test_kill_9_leaves_no_acked_entry_whose_document_is_not_written(
    redis_server, make_daemon, fake_embed
):
    fake_embed.latency = 0.2  # requests stay in flight while later reads come in
    queue = api_queue(redis_server, make_daemon, fake_embed, batch=50)
    client = redis_server.client()
    ops = [{"op": "upsert", "id": f"d{i}", "text": f"Note number {i}."} for i in range(2000)]
    publish(client, ops)
    queue.start()

    def acked() -> set[str]:
        groups = client.xinfo_groups(STREAM)
        if not groups:
            return set()
        delivered = client.xrange(STREAM, "-", groups[0]["last-delivered-id"])
        pending = client.xpending_range(STREAM, "syncd", "-", "+", 10_000)
        unacked = {p["message_id"] for p in pending}
        return {fields["id"] for entry_id, fields in delivered if entry_id not in unacked}

    wait_until(lambda: bool(acked()), 60, "first acks")
    queue.stop(signal.SIGKILL)
    done = acked()
    assert 0 < len(done) < len(ops)
    settings = load_config(queue.config)
    state, _ = open_state(settings.state.path)
    try:
        recorded = state.documents("cms")
    finally:
        state.close()
    stored = {p["path"] for p in points(settings).values()}
    assert done <= stored and done <= {p for p, d in recorded.items() if d.status == "done"}
    queue.start().wait_ready(timeout=60)
    wait_until(lambda: drained(queue), 120, "drained after the kill")
    assert queue.stop() == 0
    assert_store_is(queue, {op["id"]: (op["text"], {}) for op in ops})


def test_a_busy_stream_gives_way_to_a_folder_change(redis_server, make_daemon, fake_embed, docs):
    fake_embed.latency = 0.2  # 4,000 entries keep the stream busy for 2 s at least
    folder = {"name": "docs", "path": "./docs"}
    queue = api_queue(redis_server, make_daemon, fake_embed, 50, folder)
    client = redis_server.client()
    publish(client, [{"op": "upsert", "id": f"d{i}", "text": f"Note {i}."} for i in range(4000)])
    queue.start().wait_ready()
    wait_until(lambda: stream_status(queue)["stream"]["pending"] > 0, 60, "stream busy")
    (docs / "note.md").write_text("A note about penguins on sea ice.\n")

    def note_synced() -> bool:
        _, body = get(queue.url("/search?q=penguins&mode=keyword&limit=1"))
        return '"note.md"' in body

    wait_until(note_synced, 60, "note synced")
    assert not drained(queue)  # the folder change did not wait for the stream to catch up
    wait_until(lambda: drained(queue), 120, "drained")
    assert queue.stop() == 0

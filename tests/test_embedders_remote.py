"""AI21 and OpenAI-compatible providers over real HTTP against the fake API."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest
import structlog
from conftest import points
from fake_embed import fake_vector

from syncd.config import EmbedderConfig, load_config
from syncd.embedders import make_embedder
from syncd.embedders.ai21 import AI21Embedder
from syncd.embedders.openai import OpenAIEmbedder
from syncd.engine import opened
from syncd.errors import BackendUnavailable, EmbedAuth, EmbedRejected
from syncd.report import Report
from syncd.store import SearchQuery, open_store

KEY = "test-key"


def config(api, provider="ai21", **kw) -> EmbedderConfig:
    base = api.url if provider == "ai21" else f"{api.url}/v1"
    values = {
        "provider": provider,
        "model": "test-model",
        "base_url": base,
        "api_key": KEY,
        "requests_per_minute": 60_000,
    } | kw
    return EmbedderConfig(**values)


def run(coro):
    return asyncio.run(coro)


async def embed_once(embedder, texts, kind="document"):
    try:
        return await embedder.embed(texts, kind)
    finally:
        await embedder.aclose()


@pytest.mark.parametrize("provider", ["ai21", "openai"])
def test_vectors_come_back_in_order_normalised(fake_embed, provider):
    fake_embed.shuffle_openai = True
    texts = [f"text number {i}" for i in range(50)]
    vectors = run(embed_once(make_embedder(config(fake_embed, provider)), texts))
    want = np.array([fake_vector(t, 64) for t in texts], dtype=np.float32)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert np.allclose(vectors, want, atol=1e-5)


def test_ai21_documents_are_segments_and_queries_are_queries(fake_embed):
    async def go():
        e = AI21Embedder(config(fake_embed))
        await e.embed(["a document chunk"], "document")
        await e.embed(["a question?"], "query")
        await e.aclose()

    run(go())
    assert [r.body["type"] for r in fake_embed.ok()] == ["segment", "query"]
    assert all(r.authorization == f"Bearer {KEY}" for r in fake_embed.log)


def test_openai_sends_model_and_input(fake_embed):
    run(embed_once(OpenAIEmbedder(config(fake_embed, "openai")), ["x", "y"]))
    (request,) = fake_embed.ok("/v1/embeddings")
    assert request.body == {"model": "test-model", "input": ["x", "y"]}


def test_ai21_refuses_a_too_long_text_without_sending_it(fake_embed):
    with pytest.raises(EmbedRejected, match="2000"):
        run(embed_once(AI21Embedder(config(fake_embed)), ["x" * 2000]))
    assert fake_embed.log == []


def test_429_honours_retry_after(fake_embed):
    fake_embed.requests_per_minute, fake_embed.retry_after = 1, "2"
    e = AI21Embedder(config(fake_embed), max_backoff_seconds=0.1)

    async def go():
        await e.embed(["first"], "document")
        # Over the fake's limit now: 429 + Retry-After: 2. Lift the limit after the first 429.
        task = asyncio.create_task(e.embed(["second"], "document"))
        while not any(r.status == 429 for r in fake_embed.log):
            await asyncio.sleep(0.01)
        fake_embed.requests_per_minute = None
        await task
        await e.aclose()

    run(go())
    statuses = [r.status for r in fake_embed.log]
    assert statuses == [200, 429, 200]
    # The backoff alone would retry within 0.1 s; the retry waited for Retry-After.
    assert fake_embed.log[2].at - fake_embed.log[1].at >= 2.0


def test_5xx_is_retried_until_it_succeeds(fake_embed):
    fake_embed.fail_rate, fake_embed.fail_statuses = 0.5, (500, 502, 503, 504)
    e = AI21Embedder(config(fake_embed), max_backoff_seconds=0.05)
    texts = [f"t{i}" for i in range(20)]

    async def go():
        out = [await e.embed([t], "document") for t in texts]
        await e.aclose()
        return out

    assert len(run(go())) == 20
    assert any(r.status >= 500 for r in fake_embed.log)
    assert len(fake_embed.ok()) == 20


def test_rejected_batch_is_not_retried_and_carries_the_api_message(fake_embed):
    fake_embed.reject_marker = "FORBIDDEN"
    with pytest.raises(EmbedRejected, match="forbidden content"):
        run(embed_once(AI21Embedder(config(fake_embed)), ["fine", "has FORBIDDEN words"]))
    assert len(fake_embed.log) == 1


def test_bad_key_is_embed_auth_naming_the_source_not_the_key(fake_embed, monkeypatch):
    monkeypatch.setenv("AI21_API_KEY", "wrong-secret-key")
    cfg = config(fake_embed, api_key=None)
    with structlog.testing.capture_logs() as logs, pytest.raises(EmbedAuth) as info:
        run(embed_once(AI21Embedder(cfg), ["x"]))
    assert "AI21_API_KEY" in str(info.value) and "401" in str(info.value)
    assert "wrong-secret-key" not in str(info.value) and "wrong-secret-key" not in repr(logs)
    assert len(fake_embed.log) == 1


def test_persistent_outage_becomes_backend_unavailable(fake_embed):
    fake_embed.outage = 503
    e = AI21Embedder(config(fake_embed), retry_seconds=0.5, max_backoff_seconds=0.1)
    with pytest.raises(BackendUnavailable, match="kept failing"):
        run(embed_once(e, ["x"]))
    assert len(fake_embed.log) >= 2


def test_requests_per_minute_is_never_exceeded(fake_embed):
    rpm = 600  # one request every 100 ms
    e = AI21Embedder(config(fake_embed, requests_per_minute=rpm, max_concurrency=4))

    async def go():
        await asyncio.gather(*(e.embed([f"t{i}"], "document") for i in range(25)))
        await e.aclose()

    run(go())
    times = sorted(r.at for r in fake_embed.log)
    # Counted in windows as the API counts, not as gaps: on a busy machine one request may
    # reach the server late and the next on time. How close to the limit it runs is
    # measured by `python -m bench` (rate_limit).
    busiest = max(sum(1 for u in times if t <= u < t + 1) for t in times)
    assert len(times) == 25 and busiest <= rpm // 60 + 1, busiest


def test_max_concurrency_bounds_requests_in_flight(fake_embed):
    fake_embed.latency = 0.2
    e = AI21Embedder(config(fake_embed, max_concurrency=3))

    async def go():
        await asyncio.gather(*(e.embed([f"t{i}"], "document") for i in range(12)))
        await e.aclose()

    run(go())
    assert fake_embed.max_in_flight == 3


def test_the_first_answer_tells_the_dimension_and_a_later_one_must_match(fake_embed):
    fake_embed.dimension = 48

    async def go():
        e = OpenAIEmbedder(config(fake_embed, "openai"), retry_seconds=0.5, max_backoff_seconds=0.1)
        await e.start()
        before = e.dimension
        await e.embed(["a"], "document")
        fake_embed.dimension = 32
        try:
            await e.embed(["b"], "document")
        except BackendUnavailable as error:
            return before, e.dimension, e.model_id, str(error)
        finally:
            await e.aclose()

    before, after, model, error = run(go())
    assert (before, after, model) == (0, 48, "openai:test-model")
    assert "32 dimensions, not 48" in error


# -- through the engine ---------------------------------------------------------------------


@pytest.fixture(params=["ai21", "openai"])
def provider(request):
    return request.param


def remote_settings(make_config, api, provider, **embedder):
    base = api.url if provider == "ai21" else f"{api.url}/v1"
    values = {
        "provider": provider,
        "model": "m",
        "base_url": base,
        "api_key": KEY,
        "requests_per_minute": 60_000,
        "max_concurrency": 4,
    } | embedder
    return load_config(make_config(embedder=values))


def resync_remote(settings) -> Report:
    async def go():
        async with opened(settings) as engine:
            return await engine.resync()

    return asyncio.run(go())


def route(provider):
    return "/embed" if provider == "ai21" else "/v1/embeddings"


def test_1000_small_documents_fill_batches(docs, make_config, fake_embed, provider):
    for i in range(1000):
        (docs / f"n{i:04}.txt").write_text(f"Small note number {i}.")
    settings = remote_settings(make_config, fake_embed, provider, batch_size=200)
    report = resync_remote(settings)
    requests = fake_embed.ok(route(provider))
    assert report.added == 1000 and report.texts_embedded == 1000
    assert len(requests) in (5, 6)  # ceil(1000 / 200) + 1
    assert max(len(r.body.get("texts") or r.body.get("input")) for r in requests) == 200
    assert len(points(settings)) == 1000


def test_a_first_sync_asks_the_api_nothing_but_its_documents(
    docs, make_config, fake_embed, provider
):
    """The dimension comes with the first answer, and the collection with the first write;
    a later run takes it from the state or, without one, from the collection."""
    (docs / "a.txt").write_text("One small note.")
    settings = remote_settings(make_config, fake_embed, provider)
    assert resync_remote(settings).texts_embedded == 1
    assert len(fake_embed.ok(route(provider))) == 1
    store = open_store(settings.qdrant, None, create=False)
    assert store.identity.dimension == fake_embed.dimension
    store.close()
    settings.state.path.unlink()  # a lost state: the collection still knows its dimension
    (docs / "b.txt").write_text("Another small note.")
    assert resync_remote(settings).texts_embedded == 1
    assert len(fake_embed.ok(route(provider))) == 2


def test_429_and_503_storm_loses_nothing_and_duplicates_nothing(
    docs, make_config, fake_embed, provider
):
    fake_embed.fail_rate = 0.3
    fake_embed.retry_after = "0"
    for i in range(300):
        (docs / f"n{i:03}.txt").write_text(f"Note {i} about item {i * 7}.")
    settings = remote_settings(make_config, fake_embed, provider, batch_size=20)
    report = resync_remote(settings)
    assert report.added == 300 and report.failed == 0
    stored = points(settings)
    assert sorted(p["path"] for p in stored.values()) == sorted(f"n{i:03}.txt" for i in range(300))
    assert any(r.status in (429, 503) for r in fake_embed.log)
    sent = fake_embed.texts(route(provider))
    assert len(sent) == len(set(sent))  # no text was embedded twice


def test_one_rejected_text_fails_only_its_document(docs, make_config, fake_embed, provider):
    fake_embed.reject_marker = "FORBIDDEN"
    for i in range(40):
        (docs / f"n{i:02}.txt").write_text(f"Note {i}.")
    (docs / "bad.txt").write_text("This note has FORBIDDEN words.")
    settings = remote_settings(make_config, fake_embed, provider)
    report = resync_remote(settings)
    assert (report.added, report.failed) == (40, 1)
    (failure,) = report.failures
    assert failure.path == "bad.txt" and "forbidden content" in failure.reason
    assert "bad.txt" not in {p["path"] for p in points(settings).values()}


def test_invalid_key_exits_3_and_leaves_documents_pending(
    docs, make_config, fake_embed, provider, tmp_path
):
    (docs / "a.txt").write_text("Alpha.")
    cfg = make_config(
        embedder={
            "provider": provider,
            "model": "m",
            "base_url": fake_embed.url if provider == "ai21" else f"{fake_embed.url}/v1",
            "api_key_file": "key.txt",
        }
    )
    (tmp_path / "key.txt").write_text("not-the-key\n")
    out = subprocess.run(
        [sys.executable, "-m", "syncd", "resync", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 3
    assert (
        "refused the key from embedder.api_key_file" in out.stderr
        and "not-the-key" not in out.stderr
    )
    status = subprocess.run(
        [sys.executable, "-m", "syncd", "status", "--json", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(status.stdout)["sources"][0]["documents"] == 0
    (tmp_path / "key.txt").write_text(KEY)
    again = subprocess.run(
        [sys.executable, "-m", "syncd", "resync", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0 and again.stdout.startswith("added 1")


def test_search_embeds_the_query_as_a_query(docs, make_config, fake_embed):
    (docs / "a.txt").write_text("Alpha.")
    settings = remote_settings(make_config, fake_embed, "ai21")
    resync_remote(settings)

    async def go():
        async with opened(settings) as engine:
            return await engine.search(SearchQuery("alpha?", mode="dense", limit=1))

    (hit,) = asyncio.run(go())
    assert hit.payload["path"] == "a.txt"
    assert fake_embed.ok()[-1].body == {"texts": ["alpha?"], "type": "query"}


# -- the key never leaks -------------------------------------------------------------------

SECRET = "sk-leak-0123456789abcdef"


@pytest.mark.parametrize("as_text", [False, True])
@pytest.mark.parametrize("status", [401, 422, 503])
def test_an_api_echoing_the_request_never_gets_the_key_into_errors_or_logs(
    fake_embed, capsys, caplog, status, as_text
):
    fake_embed.key, fake_embed.echo, fake_embed.echo_as_text = SECRET, status, as_text
    e = AI21Embedder(
        config(fake_embed, api_key=SECRET), retry_seconds=0.3, max_backoff_seconds=0.05
    )
    with structlog.testing.capture_logs() as logs, pytest.raises(Exception) as info:
        run(embed_once(e, ["some text"]))
    seen = [str(info.value), repr(info.value), repr(logs), caplog.text, *capsys.readouterr()]
    assert fake_embed.log and all(r.authorization == f"Bearer {SECRET}" for r in fake_embed.log)
    assert "[redacted]" in str(info.value)
    assert not [channel for channel in seen if SECRET in channel]


def test_the_key_reaches_no_output_and_no_file_whatever_goes_wrong(
    docs, make_config, fake_embed, tmp_path
):
    (docs / "a.txt").write_text("Alpha.")
    fake_embed.key = SECRET
    embedder = {"provider": "ai21", "model": "m", "base_url": fake_embed.url}
    outputs = []

    def syncd(config, *args):
        out = subprocess.run(
            [sys.executable, "-m", "syncd", *args, "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        outputs.extend([out.stdout, out.stderr])
        return out

    key_file = tmp_path / "key.txt"
    key_file.write_text(f"{SECRET}\n{SECRET[::-1]}\n")
    config = make_config(embedder=embedder | {"api_key_file": "key.txt"})
    two_lines = syncd(config, "resync")
    assert two_lines.returncode == 2 and "key.txt must hold exactly one line" in two_lines.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text(f"sources: []\nembedder:\n  api_key: {SECRET}: oops\n")
    syntax = syncd(broken, "status", "--json")
    assert syntax.returncode == 2 and "line 3, column" in syntax.stderr

    key_file.write_text(f"{SECRET}\n")
    fake_embed.echo = 401
    echoed = syncd(config, "resync")
    assert echoed.returncode == 3 and "[redacted]" in echoed.stderr
    assert syncd(config, "status", "--json").returncode == 0

    assert fake_embed.log and fake_embed.log[-1].authorization == f"Bearer {SECRET}"
    assert not [o for o in outputs if SECRET in o or SECRET[::-1] in o]
    secret = SECRET.encode()
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p not in (key_file, broken)]
    assert any(p.name == "state.db" for p in written)
    assert not [p for p in written if secret in p.read_bytes()]

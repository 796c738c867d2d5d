"""Embedding providers behind one small interface, chosen by `embedder.provider`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol

from syncd.config import EmbedderConfig

if TYPE_CHECKING:
    import numpy as np

Kind = Literal["document", "query"]


class Embedder(Protocol):
    #: What the vectors are, recorded with the collection: "<provider>:<model>".
    model_id: str
    dimension: int
    #: Texts one `embed` call may take.
    max_batch: int
    #: Monotonic time since when requests keep failing (being retried); None when healthy.
    failing_since: float | None

    async def start(self) -> None:
        """Be ready to embed. `dimension` is 0 until known: a remote API's comes with its
        first answer, unless set beforehand from an earlier run or the collection.

        Raises BackendUnavailable (EmbedAuth for a refused key) when it cannot be.
        """
        ...

    async def embed(self, texts: list[str], kind: Kind) -> np.ndarray:
        """One row per text, L2-normalised float32; documents and queries may differ.

        Raises EmbedRejected when the API refuses these texts (400/413/422), EmbedAuth for
        401/403, BackendUnavailable when retries of transient failures are exhausted.
        """
        ...

    async def aclose(self) -> None: ...


def model_id(config: EmbedderConfig) -> str:
    """The `model_id` the embedder of this config will have, without starting it."""
    return f"{config.provider}:{config.model}"


def make_embedder(config: EmbedderConfig) -> Embedder:
    if config.provider == "local":
        from syncd.embedders.local import LocalEmbedder

        return LocalEmbedder(config)
    if config.provider == "ai21":
        from syncd.embedders.ai21 import AI21Embedder

        return AI21Embedder(config)
    from syncd.embedders.openai import OpenAIEmbedder

    return OpenAIEmbedder(config)

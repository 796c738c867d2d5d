"""What every remote embedding API shares: one HTTP client, the client-side rate limit,
bounded concurrency, retries, response checks and metrics. Providers add only their
request body and how to read the answer.

Limits are libraries' work: aiolimiter spaces requests (a bucket of one, so there is no
burst above `requests_per_minute`), tenacity retries with exponential backoff and jitter,
waiting at least as long as a Retry-After header asks.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import structlog
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from syncd import metrics
from syncd.config import EmbedderConfig, api_key
from syncd.credentials import redact
from syncd.embedders import Kind, model_id
from syncd.errors import BackendUnavailable, EmbedAuth, EmbedRejected, EmbedTransient

if TYPE_CHECKING:
    import numpy as np

log = structlog.get_logger()

# Retried: the request may well succeed later.
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
# The request itself is wrong: split the batch to find the text the API refuses.
REJECTED_STATUS = {400, 413, 422}


class RemoteEmbedder:
    provider: str = ""
    default_base_url: str = ""
    path: str = ""

    def __init__(
        self,
        config: EmbedderConfig,
        retry_seconds: float = 300,
        max_backoff_seconds: float = 60,
    ) -> None:
        self.model_id = model_id(config)
        self.model = config.model
        self.dimension = 0
        self.max_batch = config.batch_size
        key, self.key_source = api_key(config)
        # Only to strip it from what the API says back: some APIs echo the request.
        self._key = key
        self.base_url = (config.base_url or self.default_base_url).rstrip("/")
        self._client = httpx.AsyncClient(
            timeout=config.timeout_seconds,
            headers={"Content-Type": "application/json"}
            | ({"Authorization": f"Bearer {key}"} if key else {}),
            # Loading the CA bundle is ~0.1 s of every command's start-up; a plain-http API
            # (TEI, vLLM, Ollama on the host) has no certificate to check.
            verify=self.base_url.startswith("https://"),
        )
        self._limiter = AsyncLimiter(1, 60 / config.requests_per_minute)
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._retry_seconds = retry_seconds
        #: Set while requests fail transiently (the daemon's /readyz reads it).
        self.failing_since: float | None = None
        self._wait = wait_exponential_jitter(multiplier=0.5, jitter=0.5, max=max_backoff_seconds)

    # -- what a provider defines ----------------------------------------------------------

    def body(self, texts: list[str], kind: Kind) -> dict[str, Any]:
        raise NotImplementedError

    def vectors(self, answer: Any) -> list[list[float]]:
        raise NotImplementedError

    def check(self, texts: list[str]) -> None:
        """Refuse, before sending, what the API is known to refuse."""

    # -- the shared part --------------------------------------------------------------------

    async def start(self) -> None:
        # Nothing is asked: the dimension, unless recorded by an earlier run, comes with the
        # first answer (a first sync's collection is created by its first write).
        log.info(
            "embedder_ready", provider=self.provider, model=self.model, dimension=self.dimension
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def embed(self, texts: list[str], kind: Kind) -> np.ndarray:
        self.check(texts)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(EmbedTransient),
            wait=self._backoff,
            stop=stop_after_delay(self._retry_seconds),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    vectors = await self._request(texts, kind, attempt.retry_state.attempt_number)
                    self.failing_since = None
                    return vectors
        except EmbedTransient as e:
            raise BackendUnavailable(
                f"{self.provider} embedding API at {self.base_url} kept failing for "
                f"{self._retry_seconds:g}s: {e}"
            ) from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        asked = getattr(error, "retry_after", None) or 0.0
        return max(asked, self._wait(state))

    async def _request(self, texts: list[str], kind: Kind, attempt: int) -> np.ndarray:
        async with self._slots:
            queued = time.monotonic()
            async with self._limiter:
                metrics.embed_ratelimit_wait_seconds.inc(time.monotonic() - queued)
                started = time.monotonic()
                try:
                    # orjson, as for the answer: 8 times faster than httpx's json.dumps.
                    response = await self._client.post(
                        f"{self.base_url}{self.path}", content=orjson.dumps(self.body(texts, kind))
                    )
                except httpx.TransportError as e:  # connection errors and timeouts
                    metrics.embed_requests.labels("error").inc()
                    self.failing_since = self.failing_since or time.monotonic()
                    raise EmbedTransient(redact(f"{type(e).__name__}: {e}", self._key)) from None
                finally:
                    metrics.embed_request_seconds.observe(time.monotonic() - started)
        status = response.status_code
        metrics.embed_requests.labels(str(status)).inc()
        ms = round((time.monotonic() - started) * 1000)
        if status == 200:
            vectors = self._parse(response, len(texts))
            log.debug("batch_embedded", texts=len(texts), ms=ms, attempt=attempt)
            return vectors
        message = _api_message(response, self._key)
        log.warning(
            "embed_request_failed",
            provider=self.provider,
            status=status,
            ms=ms,
            attempt=attempt,
            message=message,
        )
        if status in (401, 403):
            raise EmbedAuth(
                f"the {self.provider} embedding API refused the key from {self.key_source} "
                f"(HTTP {status}: {message})",
                hint="check the key; the documents stay pending until it works",
            )
        if status in TRANSIENT_STATUS:
            self.failing_since = self.failing_since or time.monotonic()
            raise EmbedTransient(f"HTTP {status}: {message}", _retry_after(response))
        if status in REJECTED_STATUS:
            raise EmbedRejected(f"HTTP {status}: {message}")
        raise BackendUnavailable(
            f"the {self.provider} embedding API at {self.base_url}{self.path} answered "
            f"HTTP {status}: {message}",
            hint="check embedder.base_url",
        )

    def _parse(self, response: httpx.Response, count: int) -> np.ndarray:
        import numpy as np  # here: a no-op resync, which embeds nothing, skips loading it

        """A malformed answer is retried: it is the server's fault, never stored."""
        try:
            # orjson: decoding the floats was a sixth of a fast API's first sync (py-spy).
            rows = self.vectors(orjson.loads(response.content))
            vectors = np.array(rows, dtype=np.float32)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise EmbedTransient(f"malformed answer: {type(e).__name__}: {e}") from None
        if vectors.ndim != 2 or vectors.shape[0] != count or not vectors.shape[1]:
            raise EmbedTransient(
                f"answer has {len(rows)} vectors of uneven or no size for {count} texts"
            )
        if self.dimension and vectors.shape[1] != self.dimension:
            raise EmbedTransient(f"answer has {vectors.shape[1]} dimensions, not {self.dimension}")
        self.dimension = vectors.shape[1]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.clip(norms, 1e-12, None)


def _api_message(response: httpx.Response, key: str | None) -> str:
    """What the API said was wrong, short, and without the key if it echoes the request."""
    try:
        body = response.json()
    except ValueError:
        return redact(response.text, key)[:300]
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("error") or body.get("message") or body
        if isinstance(detail, dict):
            detail = detail.get("message", detail)
        body = detail
    return redact(str(body), key)[:300]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())

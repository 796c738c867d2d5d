"""The one exception tree of syncd; `cli.main` maps it to exit codes.

    SyncdError
    ├── ConfigError            bad usage or configuration: exit 2
    │   └── StoreMismatch      the collection was built with another embedder: exit 2
    ├── BackendUnavailable     Qdrant, the embedder or Redis unreachable, or refused credentials: exit 3
    │   ├── EmbedAuth          the embedding API refused the key (401/403)
    │   ├── StoreLocked        the embedded store is held by another process (`syncd run`)
    │   └── SourceUnavailable  a source folder is missing or empty while documents are known
    ├── SourceError            a source refused a request (Redis answered an error): retried
    ├── DocumentError          one document cannot be synced; recorded as failed, others go on
    │   ├── EmbedRejected      the embedding API rejected this document's text (400/413/422)
    │   └── UnsupportedFormat  not a kind of file syncd reads; recorded as skipped
    ├── EmbedTransient         connection error, timeout, 408/429/5xx: retried, never fatal to a document
    ├── StoreError             Qdrant refused a write or query: fails the documents concerned
    └── StateError             SQLite failed (disk full, corrupt or unreadable file): exit 1

Only BackendUnavailable means "wait and try again": the daemon retries it with backoff
and nothing else.

Each module translates the exceptions of the library it wraps at its edge, so nothing
above `store/`, `embedders/` or `state.py` catches a library's own exception types.
"""


class SyncdError(Exception):
    """Base of every error syncd raises on purpose."""

    #: What the user can do about it, printed as "Try: ..." by the CLI.
    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class ConfigError(SyncdError):
    """The configuration or the command line is wrong; the message names the key."""


class StoreMismatch(ConfigError):
    """The collection exists with another vector size or embedder model."""


class BackendUnavailable(SyncdError):
    """A required backend cannot be reached or refused the credentials."""


class EmbedAuth(BackendUnavailable):
    """The embedding API refused the key."""


class StoreLocked(BackendUnavailable):
    """The embedded store allows one process, and another one has it open."""


class SourceUnavailable(BackendUnavailable):
    """A source root is missing or empty though the state knows documents under it
    (most likely an unmounted share): nothing is deleted until it is back or confirmed."""


class SourceError(SyncdError):
    """A source answered a request with an error (not an outage)."""


class DocumentError(SyncdError):
    """One document cannot be synced; the message is the reason shown by `status`."""


class EmbedRejected(DocumentError):
    """The embedding API rejected a text of this document."""


class UnsupportedFormat(DocumentError):
    """syncd does not read this kind of file; it is skipped, not failed."""


class EmbedTransient(SyncdError):
    """A failure of the embedding API that is worth retrying."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: Seconds the server asked us to wait (Retry-After), if it said.
        self.retry_after = retry_after


class StoreError(SyncdError):
    """Qdrant answered a request with an error."""


class StateError(SyncdError):
    """syncd's own SQLite state failed."""

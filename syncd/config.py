"""The configuration: one YAML file, overridable by `SYNCD_<SECTION>__<KEY>` variables.

Nothing is read at import time; `load_config(path)` returns a validated `Settings` or
raises `ConfigError` naming the offending key.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml
from msgspec import Meta

from syncd.credentials import read_secret_file, secret_problem
from syncd.errors import ConfigError
from syncd.extract import DEFAULT_INCLUDE

# The AI21 Embed API takes texts shorter than 2,000 characters.
AI21_MAX_CHARS = 2000
AI21_MAX_BATCH = 200


# msgspec, not pydantic: the same declarative checks, and `syncd status` answers in a tenth
# of the time (pydantic's import and model build alone took 0.1 s).
Name = Annotated[str, Meta(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
Positive = Annotated[float, Meta(gt=0)]
NonNegative = Annotated[float, Meta(ge=0)]


class Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class Secret:
    """A key or token: its value only through `get_secret_value()`, never in repr or str."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


class _Source(Section, tag_field="type"):
    @property
    def type(self) -> str:
        """`folder` or `redis`: the key `type` in the config, msgspec's tag."""
        return str(self.__struct_config__.tag)


class FolderSource(_Source, tag="folder"):
    name: Name
    path: Path
    include: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude: list[str] = msgspec.field(
        default_factory=lambda: ["**/.git/**", "**/.syncd/**", "**/node_modules/**"]
    )
    # Larger files are recorded as skipped, not read.
    max_file_bytes: Annotated[int, Meta(gt=0)] = 32_000_000
    # A file whose extraction takes longer is recorded as failed.
    extract_timeout_seconds: Positive = 60
    # OCR of pages without a text layer (Tesseract; needs e.g. Debian's tesseract-ocr-eng).
    ocr: bool = False
    ocr_language: Annotated[str, Meta(pattern=r"^[a-z_]{3,}(\+[a-z_]{3,})*$")] = "eng"
    # A listing that would delete a larger share of a source of >= 20 documents is held
    # until `resync --allow-delete`: an unmounted or half-synced folder looks like that.
    max_delete_fraction: Annotated[float, Meta(ge=0, le=1)] = 0.5


class RedisSource(_Source, tag="redis"):
    """Documents as events on a Redis Stream (see CONTRACT.md, Queue source)."""

    name: Name
    url: str = "redis://localhost:6379/0"
    stream: Annotated[str, Meta(min_length=1)] = "syncd:docs"
    group: Annotated[str, Meta(min_length=1)] = "syncd"
    #: Default: hostname-pid, so a restarted process is a new consumer.
    consumer: str | None = None
    #: Where a new consumer group starts: "0" syncs the backlog, "$" only new entries.
    start: Literal["0", "$"] = "0"
    max_deliveries: Annotated[int, Meta(ge=1)] = 5
    #: Entries pending this long on any consumer (a dead one, or a failed try) are reclaimed.
    claim_idle_seconds: Positive = 60
    #: Entries read at once; bounds memory while the embedder or Qdrant is down.
    batch: Annotated[int, Meta(ge=1, le=10_000)] = 500


class ChunkingConfig(Section):
    max_chars: Annotated[int, Meta(ge=100)] = 1000
    overlap_chars: Annotated[int, Meta(ge=0)] = 100

    def __post_init__(self) -> None:
        if self.overlap_chars * 2 > self.max_chars:
            raise ValueError("overlap_chars: must be at most half of max_chars")


class EmbedderConfig(Section):
    provider: Literal["local", "ai21", "openai"] = "local"
    model: str = "all-MiniLM-L6-v2"
    base_url: str | None = None
    api_key: Secret | None = None
    api_key_file: Path | None = None
    batch_size: Annotated[int, Meta(ge=1, le=2048)] = 200
    requests_per_minute: Positive = 60
    max_concurrency: Annotated[int, Meta(ge=1, le=64)] = 2
    timeout_seconds: Positive = 30

    def __post_init__(self) -> None:
        self.api_key = _check_secret(self.api_key, "api_key")


class QdrantConfig(Section):
    path: Path | None = Path(".syncd/qdrant")
    url: str | None = None
    api_key: Secret | None = None
    collection: Name = "syncd"

    def __post_init__(self) -> None:
        self.api_key = _check_secret(self.api_key, "api_key")


class StateConfig(Section):
    path: Path = Path(".syncd/state.db")
    # Cached vectors of chunks no longer in use, kept so an undo or a rename back is free.
    vector_retention_days: NonNegative = 7


class WatchConfig(Section):
    debounce_seconds: NonNegative = 1.0
    rescan_interval_seconds: NonNegative = 300
    polling: bool = False
    # The daemon's own `verify --repair`; 0 disables.
    verify_interval_seconds: NonNegative = 86400


class ServerConfig(Section):
    listen: str | None = "127.0.0.1:9187"
    #: Bearer token for every endpoint but /livez and /readyz; required beyond loopback.
    token: Secret | None = None
    token_file: Path | None = None

    def __post_init__(self) -> None:
        if self.listen:
            try:
                parse_listen(self.listen)
            except ValueError as e:
                raise ValueError(f"listen: {e}") from None
        if self.token is not None and self.token_file is not None:
            raise ValueError("token_file: set server.token or server.token_file, not both")
        self.token = _check_secret(self.token, "token")

    def bearer_token(self) -> str | None:
        """The token clients must send, read from `token_file` on each call (rotation)."""
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_file is not None:
            return read_secret_file(self.token_file, "server.token_file")
        return None


def parse_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) → (host, port); an empty host means loopback."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def check_listen_safe(settings: Settings) -> None:
    """`syncd run` only: refuse to serve /search and /resync beyond loopback without a token.

    Other commands load such a config as is; they never listen.
    """
    if not settings.server.listen:
        return
    host, _ = parse_listen(settings.server.listen)
    server = settings.server
    if server.token is None and server.token_file is None and not _is_loopback(host):
        raise ConfigError(
            f"server.token: server.listen {settings.server.listen} is reachable beyond "
            "loopback, and anyone who reaches it could read every indexed chunk",
            hint="set server.token or server.token_file, or listen on 127.0.0.1",
        )
    # An unreadable token file fails at start-up, not on the first request.
    server.bearer_token()


def _check_secret(value: Secret | str | None, key: str) -> Secret | None:
    """The secret, checked; given as text when a section is built in code, not loaded."""
    if isinstance(value, str):
        value = Secret(value)
    problem = value and secret_problem(value.get_secret_value())
    if problem:
        raise ValueError(f"{key}: {problem}")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # A host name may resolve anywhere, now or later.
        return False


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


class Settings(Section):
    sources: Annotated[list[FolderSource | RedisSource], Meta(min_length=1)]
    chunking: ChunkingConfig = msgspec.field(default_factory=ChunkingConfig)
    embedder: EmbedderConfig = msgspec.field(default_factory=EmbedderConfig)
    #: A new embedder whose index is built beside the active one, then switched to.
    embedder_next: EmbedderConfig | None = None
    qdrant: QdrantConfig = msgspec.field(default_factory=QdrantConfig)
    state: StateConfig = msgspec.field(default_factory=StateConfig)
    watch: WatchConfig = msgspec.field(default_factory=WatchConfig)
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"sources: names must be unique, got {names}")
        for key, embedder in (("embedder", self.embedder), ("embedder_next", self.embedder_next)):
            if embedder is None or embedder.provider != "ai21":
                continue
            if self.chunking.max_chars >= AI21_MAX_CHARS:
                raise ValueError(
                    f"chunking.max_chars: must be below {AI21_MAX_CHARS} with provider ai21"
                )
            if embedder.batch_size > AI21_MAX_BATCH:
                raise ValueError(f"{key}.batch_size: must be at most {AI21_MAX_BATCH} with ai21")
        if self.qdrant.url is not None and self.qdrant.path is not None:
            raise ValueError("qdrant.url: set qdrant.url or qdrant.path, not both")
        if self.qdrant.url is None and self.qdrant.path is None:
            raise ValueError("qdrant.path: set qdrant.path (embedded) or qdrant.url (server)")

    def source(self, name: str) -> FolderSource | RedisSource:
        for s in self.sources:
            if s.name == name:
                return s
        raise ConfigError(
            f"--source: no source named {name!r} (have: {[s.name for s in self.sources]})"
        )


def default_config_path() -> Path:
    return Path(os.environ.get("SYNCD_CONFIG", "config.yaml"))


def load_config(path: Path | None = None) -> Settings:
    """Read, override from the environment, validate, and anchor relative paths at the file."""
    path = path or default_config_path()
    environment = _environment()
    try:
        data = yaml.safe_load(path.read_bytes()) or {}
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        # PyYAML's own message quotes the offending line, which may be the one with a key.
        raise ConfigError(f"config file {path}: invalid YAML {_yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections")
    # Moving from embedded to server means setting qdrant.url: the path (the default, or
    # the file's when the URL comes from the environment) must yield.
    qdrant = data.get("qdrant") or {}
    env_url = os.environ.get("SYNCD_QDRANT__URL") and "SYNCD_QDRANT__PATH" not in os.environ
    if env_url or (qdrant.get("url") and "path" not in qdrant):
        data["qdrant"] = {**qdrant, "path": None}
    # Environment variables override the file, key by key within a section.
    for section, value in environment.items():
        current = data.get(section)
        data[section] = (
            current | value if isinstance(current, dict) and isinstance(value, dict) else value
        )
    # A source's `type` may be left out for a folder, the common case.
    sources = data.get("sources")
    if isinstance(sources, list):
        data["sources"] = [
            {"type": "folder", **s} if isinstance(s, dict) and "type" not in s else s
            for s in sources
        ]
    try:
        # Not strict: values from the environment are text, converted as the file's are.
        settings = msgspec.convert(data, Settings, strict=False, dec_hook=_from_text)
    except msgspec.ValidationError as e:
        raise ConfigError(f"config file {path}: {_describe(e)}") from None
    return _anchor(settings, path.resolve().parent)


def _environment() -> dict[str, Any]:
    """The `SYNCD_*` variables as sections: `SYNCD_<SECTION>` is JSON (a whole section, or the
    list of sources), `SYNCD_<SECTION>__<KEY>` one value as text, converted as the file's is.

    A misspelt name (SYNCD_EMBEDER__PROVIDER) is an error: ignored, it would go unnoticed.
    """
    known = {"SYNCD_CONFIG"}
    for field in msgspec.structs.fields(Settings):
        known.add(f"SYNCD_{field.name.upper()}")
        # `embedder_next` is optional: its annotation is `EmbedderConfig | None`.
        for section in (field.type, *getattr(field.type, "__args__", ())):
            if isinstance(section, type) and issubclass(section, Section):
                known.update(
                    f"SYNCD_{field.name.upper()}__{key.upper()}"
                    for key in section.__struct_fields__
                )
    sections: dict[str, Any] = {}
    keys: dict[str, dict[str, str]] = {}
    for name, value in os.environ.items():
        upper = name.upper()
        if not upper.startswith("SYNCD_") or upper == "SYNCD_CONFIG":
            continue
        section, _, key = upper.removeprefix("SYNCD_").lower().partition("__")
        if upper not in known:
            raise ConfigError(
                f"environment variable {name}: unknown key "
                f"{upper.removeprefix('SYNCD_').lower().replace('__', '.')}",
                hint="unset it, or name a key of config.yaml as SYNCD_<SECTION>__<KEY>",
            )
        if key:
            keys.setdefault(section, {})[key] = value
            continue
        try:
            sections[section] = json.loads(value)
        except ValueError as e:
            # json's message gives the position only, never the text (which may hold a key).
            raise ConfigError(f"environment variable {name}: invalid JSON: {e}") from None
    for section, values in keys.items():
        whole = sections.get(section)
        sections[section] = (whole if isinstance(whole, dict) else {}) | values
    return sections


def _yaml_problem(e: yaml.YAMLError) -> str:
    """Where and what, without the text of the line; quoted text longer than a character
    (an alias name, a scalar) is left out too."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or getattr(e, "reason", None) or type(e).__name__
    problem = re.sub(r"'(?!<)[^']{3,}'|\"[^\"]{3,}\"", "'...'", str(problem))
    context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and start is not None and start != mark:
        problem += f" ({context} from line {start.line + 1}, column {start.column + 1})"
    if mark is not None:
        return f"at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    position = getattr(e, "position", None)
    return f"at byte {position}: {problem}" if position is not None else problem


def _from_text(kind: type, value: Any) -> Any:
    """The types msgspec leaves to us: paths and secrets, both given as text."""
    if kind in (Path, Secret) and isinstance(value, str):
        return kind(value)
    raise ValueError(f"expected text, got {type(value).__name__}")


_WHERE = re.compile(r"(?P<msg>.*?)(?: - at `\$(?P<where>[^`]*)`)?", re.DOTALL)


def _describe(e: msgspec.ValidationError) -> str:
    """msgspec's "Expected `int` >= 1 - at `$.sources[0].batch`" as "sources.0.batch: ..."."""
    found = _WHERE.fullmatch(str(e))
    assert found is not None  # every string matches
    msg, where = found["msg"], found["where"] or ""
    key = re.sub(r"\[(\d+)\]", r".\1", where).lstrip(".")
    named = re.fullmatch(r"Object (contains unknown|missing required) field `(\w+)`", msg)
    if named:
        key, msg = (
            ".".join(filter(None, (key, named[2]))),
            ("unknown key" if named[1].startswith("contains") else "required"),
        )
    elif re.match(r"[a-z_.]+: ", msg):  # our own checks name the key within their section
        return ".".join(filter(None, (key, msg)))
    return f"{key}: {msg}" if key else msg


def _anchor(settings: Settings, base: Path) -> Settings:
    def at(p: Path | None) -> Path | None:
        return None if p is None else (base / p.expanduser())

    for s in settings.sources:
        if isinstance(s, FolderSource):
            s.path = at(s.path)
    settings.state.path = at(settings.state.path)
    settings.qdrant.path = at(settings.qdrant.path)
    for embedder in (settings.embedder, settings.embedder_next):
        if embedder is not None:
            embedder.api_key_file = at(embedder.api_key_file)
    settings.server.token_file = at(settings.server.token_file)
    return settings


def api_key(embedder: EmbedderConfig) -> tuple[str | None, str]:
    """The key and where it came from (for messages; the key itself is never shown)."""
    if embedder.api_key is not None:
        return embedder.api_key.get_secret_value(), "embedder.api_key"
    if embedder.api_key_file is not None:
        return (
            read_secret_file(embedder.api_key_file, "embedder.api_key_file"),
            f"embedder.api_key_file ({embedder.api_key_file})",
        )
    var = {"ai21": "AI21_API_KEY", "openai": "OPENAI_API_KEY"}.get(embedder.provider)
    if var and os.environ.get(var):
        problem = secret_problem(os.environ[var])
        if problem:
            raise ConfigError(f"{var} {problem}")
        return os.environ[var], var
    return None, "no key configured"

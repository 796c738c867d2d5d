"""Secrets (API keys, the HTTP token): read, check and keep out of every message.

A secret ends up in an HTTP header. A value that cannot be one (two lines, spaces, control
characters) fails much later with a message that may quote it, so it is refused on load,
naming the key or the file and never showing the value.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from syncd.errors import ConfigError

_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_BEARER = re.compile(r"(?i)\bbearer\s+[^\s\"',;}]+")
REDACTED = "[redacted]"


def secret_problem(value: str) -> str | None:
    """Why `value` cannot be a secret, in words that do not show it; None if it can."""
    if not _VISIBLE_ASCII.fullmatch(value):
        return "must be one word of visible ASCII characters (value not shown)"
    return None


def read_secret_file(path: Path, key: str) -> str:
    """The one line of a secret file (systemd LoadCredential, Docker secrets)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{key}: {path}: {e.strerror}") from None
    lines = data.splitlines()
    hint = f"write only the secret, on one line, to {path}"
    if len(lines) != 1:
        raise ConfigError(
            f"{key}: {path} must hold exactly one line, it holds {len(lines)}", hint=hint
        )
    value = lines[0].strip().decode("latin-1")
    problem = secret_problem(value)
    if problem:
        raise ConfigError(f"{key}: the line in {path} {problem}", hint=hint)
    return value


def redact(text: str, *secrets: str | None) -> str:
    """`text` without the secrets and without anything sent as a Bearer credential.

    Apply before truncating, so no part of a secret survives at a cut.
    """
    for secret in secrets:
        if secret:
            # As written, and as a JSON string or a Python repr would escape it.
            for form in {secret, json.dumps(secret)[1:-1], repr(secret)[1:-1]}:
                text = text.replace(form, REDACTED)
    return _BEARER.sub(f"Bearer {REDACTED}", text)

"""Metadata as plain, bounded JSON: YAML front matter, document properties, queue metadata.

Everything here ends in a point's payload, which Qdrant serialises as JSON: NaN, infinity,
bytes or lone surrogates there make the write fail for the whole batch, so they are refused
per document instead. The bounds exist because a few hundred bytes of YAML can describe
billions of values through aliases (an alias is counted as the values it stands for), and
because deep nesting is walked recursively by PyYAML's composer, json and Qdrant.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import yaml

from syncd.errors import DocumentError

MAX_DEPTH = 32
MAX_ITEMS = 10_000
_INT64 = 2**63


def json_safe(
    value: Any, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS, where: str = "metadata"
) -> Any:
    """`value` as plain JSON types: dates become ISO strings, sets and tuples lists, keys
    strings (as json.dumps writes them). Raise DocumentError naming the offending place
    (`where.key[2]`) for NaN/infinity, integers beyond 64 bits, bytes, other types, nesting
    deeper than `max_depth` or more than `max_items` values in all.
    """
    budget = [max_items]
    return _convert(value, where, 0, max_depth, budget)


def _convert(value: Any, at: str, depth: int, max_depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise DocumentError(f"{at}: more than the allowed number of values")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if not _encodable(value):
            raise DocumentError(f"{at}: text is not valid Unicode (lone surrogate)")
        return value
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise DocumentError(f"{at}: integer out of the 64-bit range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DocumentError(f"{at}: {value} is not a JSON number")
        return value
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, dict | list | tuple | set | frozenset):
        if depth >= max_depth:
            raise DocumentError(f"{at}: nested deeper than {max_depth} levels")
        if isinstance(value, dict):
            budget[0] -= len(value)  # the keys, as the YAML parser counts them
            return {
                (k := _key(key, at)): _convert(v, f"{at}.{k}", depth + 1, max_depth, budget)
                for key, v in value.items()
            }
        items = [
            _convert(v, f"{at}[{i}]", depth + 1, max_depth, budget) for i, v in enumerate(value)
        ]
        if isinstance(value, set | frozenset):
            items.sort(key=lambda v: json.dumps(v, sort_keys=True))  # stable across runs
        return items
    raise DocumentError(f"{at}: a {type(value).__name__} value is not JSON")


def _key(key: Any, at: str) -> str:
    if isinstance(key, str):
        if not _encodable(key):
            raise DocumentError(f"{at}: key is not valid Unicode (lone surrogate)")
        return key
    if key is None or isinstance(key, bool | int | float):
        if isinstance(key, float) and not math.isfinite(key):
            raise DocumentError(f"{at}: {key} is not a valid key")
        return json.dumps(key)
    if isinstance(key, dt.date | dt.time):
        return key.isoformat()
    raise DocumentError(f"{at}: a {type(key).__name__} key is not JSON")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Loader(yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader whose impossible dates (2024-02-30) stay the text the author wrote."""

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError:
            return self.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_timestamp)


def load_front_matter(
    text: str, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS
) -> dict[str, Any] | None:
    """The YAML mapping in `text` as JSON-safe metadata; None when it is not YAML or not a
    mapping (it then stays in the body, where the author wrote it). Raise DocumentError when
    it nests deeper or describes more values than allowed, before anything is built.
    """
    try:
        _check_shape(text, max_depth, max_items)
        parsed = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise DocumentError(f"front matter: {str(e).split(':')[0]}") from None
    if not isinstance(parsed, dict):
        return None
    return json_safe(parsed, max_depth, max_items, where="front matter")


def _check_shape(text: str, max_depth: int, max_items: int) -> None:
    """Walk the parser's events (a flat stream, no recursion), counting every value an
    alias stands for, so an alias bomb is refused without being expanded.
    """
    sizes: dict[str, int] = {}  # anchor → values it stands for
    open_nodes: list[tuple[str | None, int]] = []  # (anchor, total when it opened)
    total = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            total += sizes.get(event.anchor, 1)
        elif isinstance(event, yaml.ScalarEvent):
            total += 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            total += 1
            open_nodes.append((event.anchor, total - 1))
            if len(open_nodes) > max_depth:
                raise DocumentError(f"front matter: nested deeper than {max_depth} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, opened_at = open_nodes.pop()
            if anchor:
                sizes[anchor] = total - opened_at
        if total > max_items:
            raise DocumentError(f"front matter: describes more than {max_items} values")

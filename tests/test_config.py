from pathlib import Path

import pytest

from syncd.config import load_config
from syncd.errors import ConfigError


def test_documented_example_config_is_valid():
    settings = load_config(Path(__file__).parent.parent / "config.yaml")
    assert settings.embedder.provider == "local"
    assert settings.sources[0].path.name == "sample-docs"


def test_relative_paths_are_relative_to_the_config_file(make_config, tmp_path):
    settings = load_config(make_config())
    assert settings.sources[0].path == tmp_path / "docs"
    assert settings.state.path == tmp_path / ".syncd" / "state.db"


def test_environment_overrides_the_file(make_config, monkeypatch):
    monkeypatch.setenv("SYNCD_EMBEDDER__BATCH_SIZE", "50")
    monkeypatch.setenv("SYNCD_QDRANT__COLLECTION", "other")
    settings = load_config(make_config(embedder={"batch_size": 100}))
    assert (settings.embedder.batch_size, settings.qdrant.collection) == (50, "other")


@pytest.mark.parametrize(
    ("sections", "named"),
    [
        ({"embedder": {"batch_sise": 10}}, "embedder.batch_sise"),
        ({"bogus": 1}, "bogus"),
        ({"chunking": {"max_chars": "many"}}, "chunking.max_chars"),
        ({"embedder": {"provider": "cohere"}}, "embedder.provider"),
        ({"sources": [{"name": "docs", "path": "./docs", "colour": "red"}]}, "sources.0.colour"),
        ({"embedder": {"provider": "ai21"}, "chunking": {"max_chars": 2000}}, "chunking.max_chars"),
    ],
)
def test_invalid_config_names_the_key(make_config, sections, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(make_config(**sections))


def test_unknown_environment_key_is_an_error(make_config, monkeypatch):
    monkeypatch.setenv("SYNCD_QDRANT__COLECTION", "x")
    with pytest.raises(ConfigError, match="colection"):
        load_config(make_config())


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_qdrant_url_replaces_the_embedded_default(make_config):
    settings = load_config(make_config(qdrant={"url": "http://127.0.0.1:6333"}))
    assert settings.qdrant.path is None and settings.qdrant.url == "http://127.0.0.1:6333"


def test_qdrant_url_from_the_environment_replaces_the_file_path(make_config, monkeypatch):
    monkeypatch.setenv("SYNCD_QDRANT__URL", "http://qdrant:6333")
    settings = load_config(make_config(qdrant={"path": "./q"}))
    assert settings.qdrant.path is None and settings.qdrant.url == "http://qdrant:6333"

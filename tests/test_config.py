import os
import subprocess
import sys
from pathlib import Path

import pytest

from syncd.config import api_key, check_listen_safe, load_config
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


def test_new_keys_have_the_documented_defaults(make_config):
    settings = load_config(make_config())
    assert settings.sources[0].max_delete_fraction == 0.5
    assert settings.state.vector_retention_days == 7
    assert settings.watch.verify_interval_seconds == 86400
    assert settings.server.token is None and settings.server.bearer_token() is None


@pytest.mark.parametrize(
    ("sections", "named"),
    [
        (
            {"sources": [{"name": "docs", "path": "./docs", "max_delete_fraction": 1.5}]},
            "sources.0.max_delete_fraction",
        ),
        ({"state": {"vector_retention_days": -1}}, "state.vector_retention_days"),
        ({"watch": {"verify_interval_seconds": -1}}, "watch.verify_interval_seconds"),
        ({"server": {"token": "a", "token_file": "t.txt"}}, "server.token_file"),
        ({"server": {"token": "two words"}}, "server.token"),
    ],
)
def test_invalid_new_keys_are_named(make_config, sections, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(make_config(**sections))


def test_token_file_is_read_relative_to_the_config_and_stripped(make_config, tmp_path):
    (tmp_path / "token.txt").write_text("s3cret-token\n")
    settings = load_config(make_config(server={"listen": "", "token_file": "token.txt"}))
    assert settings.server.bearer_token() == "s3cret-token"


@pytest.mark.parametrize("content", ["", "\n", "first\nsecond\n", "has space\n"])
def test_a_token_file_not_of_one_word_names_the_file_not_its_content(
    make_config, tmp_path, content
):
    (tmp_path / "token.txt").write_text(content)
    settings = load_config(make_config(server={"listen": "", "token_file": "token.txt"}))
    with pytest.raises(ConfigError, match=r"server\.token_file.*token\.txt") as info:
        settings.server.bearer_token()
    assert all(word not in str(info.value) for word in ("first", "second", "space"))


def test_the_token_is_never_in_repr_or_str(make_config):
    settings = load_config(make_config(server={"listen": "", "token": "s3cret-token"}))
    assert "s3cret-token" not in repr(settings) and "s3cret-token" not in str(settings)
    assert settings.server.bearer_token() == "s3cret-token"


@pytest.mark.parametrize("listen", ["0.0.0.0:9187", "[::]:9187", "syncd.example:9187"])
def test_run_refuses_to_listen_beyond_loopback_without_a_token(make_config, listen):
    settings = load_config(make_config(server={"listen": listen}))  # search, status: fine
    with pytest.raises(ConfigError, match=r"server\.token"):
        check_listen_safe(settings)
    with_token = load_config(make_config(server={"listen": listen, "token": "t0ken"}))
    check_listen_safe(with_token)


@pytest.mark.parametrize("listen", ["", "127.0.0.1:9187", "[::1]:9187", "localhost:9187", ":9187"])
def test_loopback_needs_no_token(make_config, listen):
    check_listen_safe(load_config(make_config(server={"listen": listen})))


def test_run_checks_the_token_file_at_start(make_config, tmp_path):
    settings = load_config(make_config(server={"listen": "0.0.0.0:1", "token_file": "nope"}))
    with pytest.raises(ConfigError, match=r"server\.token_file.*nope"):
        check_listen_safe(settings)


def test_misspelt_section_variable_is_named(make_config, monkeypatch):
    monkeypatch.setenv("SYNCD_EMBEDER__PROVIDER", "ai21")
    with pytest.raises(ConfigError, match="SYNCD_EMBEDER__PROVIDER"):
        load_config(make_config())


def test_known_variables_stay_allowed(make_config, monkeypatch, tmp_path):
    config = make_config()
    monkeypatch.setenv("SYNCD_CONFIG", str(config))
    monkeypatch.setenv("SYNCD_STATE__PATH", str(tmp_path / "s.db"))
    monkeypatch.setenv("SYNCD_SOURCES", '[{"name": "env", "path": "./docs"}]')
    monkeypatch.setenv("SYNCD_WATCH__VERIFY_INTERVAL_SECONDS", "0")
    settings = load_config()
    assert settings.sources[0].name == "env" and settings.watch.verify_interval_seconds == 0


def test_unknown_variable_exits_2_naming_it(make_config):
    env = {**os.environ, "SYNCD_EMBEDER__PROVIDER": "ai21"}
    out = subprocess.run(
        [sys.executable, "-m", "syncd", "status", "-c", str(make_config())],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 2 and "SYNCD_EMBEDER__PROVIDER" in out.stderr


def test_yaml_error_gives_line_and_column_without_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: []\nembedder:\n  api_key: sk-live-123456: oops\n")
    with pytest.raises(ConfigError, match=r"line 3, column \d+") as info:
        load_config(bad)
    assert "sk-live" not in str(info.value) and info.value.__cause__ is None


def test_an_unterminated_quoted_key_is_not_echoed(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text('sources: []\nembedder:\n  api_key: "sk-live-123456\n')
    with pytest.raises(ConfigError, match="line") as info:
        load_config(bad)
    assert "sk-live" not in str(info.value)


@pytest.mark.parametrize("content", ["sk-one\nsk-two\n", "", "sk one\n", "sk-\x01\n"])
def test_api_key_file_must_hold_one_word_and_is_never_shown(make_config, tmp_path, content):
    (tmp_path / "key.txt").write_text(content)
    settings = load_config(make_config(embedder={"provider": "ai21", "api_key_file": "key.txt"}))
    with pytest.raises(ConfigError, match=r"embedder\.api_key_file.*key\.txt") as info:
        api_key(settings.embedder)
    assert "sk" not in str(info.value).replace(str(tmp_path), "")


def test_api_key_with_a_newline_is_refused_without_showing_it(make_config):
    with pytest.raises(ConfigError, match=r"embedder\.api_key") as info:
        load_config(make_config(embedder={"provider": "ai21", "api_key": "sk-abc\nsk-def"}))
    assert "sk-abc" not in str(info.value)


def test_api_key_variable_with_a_space_is_refused_naming_it(make_config, monkeypatch):
    monkeypatch.setenv("AI21_API_KEY", "sk-abc sk-def")
    settings = load_config(make_config(embedder={"provider": "ai21"}))
    with pytest.raises(ConfigError, match="AI21_API_KEY") as info:
        api_key(settings.embedder)
    assert "sk-abc" not in str(info.value)


def test_embedder_next_takes_the_keys_of_embedder(make_config, monkeypatch, tmp_path):
    monkeypatch.setenv("SYNCD_EMBEDDER_NEXT__REQUESTS_PER_MINUTE", "30")
    settings = load_config(
        make_config(
            embedder_next={
                "provider": "openai",
                "model": "text-embedding-3-small",
                "api_key_file": "keys/openai",
            }
        )
    )
    following = settings.embedder_next
    assert (following.provider, following.requests_per_minute) == ("openai", 30)
    assert following.api_key_file == tmp_path / "keys" / "openai"
    monkeypatch.delenv("SYNCD_EMBEDDER_NEXT__REQUESTS_PER_MINUTE")
    assert load_config(make_config()).embedder_next is None


@pytest.mark.parametrize(
    ("sections", "named"),
    [
        ({"embedder_next": {"modle": "x"}}, "embedder_next.modle"),
        ({"embedder_next": {"provider": "ai21", "batch_size": 500}}, "embedder_next.batch_size"),
    ],
)
def test_invalid_embedder_next_names_the_key(make_config, sections, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(make_config(**sections))

"""The systemd units, the Dockerfile and compose.yaml, checked as far as this machine can."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
UNITS = ["syncd.service", "syncd-resync.service", "syncd-resync.timer"]


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The units, with ExecStart pointing at this environment's syncd (verify checks it exists)."""
    syncd = Path(sys.executable).parent / "syncd"
    for name in UNITS:
        text = (ROOT / "systemd" / name).read_text().replace("/opt/syncd/bin/syncd", str(syncd))
        (tmp_path / name).write_text(text)
    return tmp_path


def systemd_analyze(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd)")
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=120)


def test_units_pass_systemd_analyze_verify_without_warnings(units):
    out = systemd_analyze("verify", *(str(units / n) for n in UNITS))
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr


def test_daemon_unit_is_hardened(units):
    out = systemd_analyze("security", "--offline=yes", str(units / "syncd.service"))
    score = float(
        re.search(r"Overall exposure level for syncd.service: ([\d.]+)", out.stdout).group(1)
    )
    print(f"exposure {score}")
    assert score <= 2.5, out.stdout[-2000:]


def test_units_say_what_the_daemon_needs():
    unit = (ROOT / "systemd" / "syncd.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=syncd",
        "DynamicUser=yes",
        "LoadCredential=embedder-key:",
        "AF_UNIX AF_INET AF_INET6",
        "ExecStart=/opt/syncd/bin/syncd run -c /etc/syncd/config.yaml",
    ):
        assert line in unit, line
    timer = (ROOT / "systemd" / "syncd-resync.timer").read_text()
    assert "Persistent=true" in timer and "RandomizedDelaySec=" in timer


def test_example_configs_are_valid(monkeypatch):
    from syncd.config import load_config

    monkeypatch.delenv("SYNCD_QDRANT__URL", raising=False)
    assert (
        str(load_config(ROOT / "systemd" / "config.yaml").state.path) == "/var/lib/syncd/state.db"
    )
    assert str(load_config(ROOT / "docker" / "config.yaml").qdrant.path) == "/var/lib/syncd/qdrant"
    monkeypatch.setenv("SYNCD_QDRANT__URL", "http://qdrant:6333")  # as compose.yaml sets it
    assert load_config(ROOT / "docker" / "config.yaml").qdrant.url == "http://qdrant:6333"


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    out = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_structure():
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 2  # multi-stage
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert 'ENTRYPOINT ["tini", "--", "syncd"]' in text and 'CMD ["run", ' in text
    assert "HEALTHCHECK" in text and "/livez" in text and 'VOLUME ["/var/lib/syncd"]' in text
    assert "torch" not in text.lower()
    assert ".venv" in (ROOT / ".dockerignore").read_text()


def test_compose_runs_syncd_beside_qdrant():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    qdrant, syncd = compose["services"]["qdrant"], compose["services"]["syncd"]
    assert qdrant["image"].startswith("qdrant/qdrant")
    assert syncd["environment"]["SYNCD_QDRANT__URL"] == "http://qdrant:6333"
    assert syncd["init"] is True and "./sample-docs:/docs:ro" in syncd["volumes"]
    assert set(compose["volumes"]) == {"qdrant-data", "syncd-state"}
    assert syncd["environment"]["SYNCD_SERVER__TOKEN_FILE"] == "/run/secrets/syncd-token"
    assert syncd["secrets"] == ["syncd-token"] and "syncd-token" in compose["secrets"]


def test_image_config_listens_beyond_loopback_only_with_its_token(tmp_path, monkeypatch):
    from syncd.config import check_listen_safe, load_config
    from syncd.errors import ConfigError

    monkeypatch.delenv("SYNCD_QDRANT__URL", raising=False)
    token = tmp_path / "syncd-token"
    token.write_text("0123456789abcdef\n")
    monkeypatch.setenv("SYNCD_SERVER__TOKEN_FILE", str(token))
    check_listen_safe(load_config(ROOT / "docker" / "config.yaml"))
    text = (ROOT / "docker" / "config.yaml").read_text()
    bare = tmp_path / "config.yaml"
    bare.write_text(text.replace("  token_file: /run/secrets/syncd-token", ""))
    monkeypatch.delenv("SYNCD_SERVER__TOKEN_FILE")
    with pytest.raises(ConfigError, match=r"server\.token"):
        check_listen_safe(load_config(bare))


def test_image_environment_built_as_the_dockerfile_does_runs_the_entrypoint(tmp_path):
    """The Dockerfile's two pip steps in a fresh venv, then its ENTRYPOINT and CMD."""
    venv = tmp_path / "opt-syncd"
    src = tmp_path / "src"
    (src / "syncd").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    (src / "syncd" / "__init__.py").touch()
    pip = [str(venv / "bin" / "pip"), "install", "-q"]
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([*pip, str(src)], check=True, timeout=900)
    subprocess.run([str(venv / "bin" / "pip"), "uninstall", "-q", "-y", "syncd"], check=True)
    # The stub's build output is newer than the real code: left behind, it would win.
    shutil.rmtree(src / "build")
    shutil.rmtree(src / "syncd.egg-info")
    shutil.rmtree(src / "syncd")
    shutil.copytree(ROOT / "syncd", src / "syncd")
    subprocess.run([*pip, "--no-deps", str(src)], check=True, timeout=300)
    listing = subprocess.run(
        [str(venv / "bin" / "pip"), "list"], capture_output=True, text=True
    ).stdout
    assert "torch" not in listing.lower()

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Hello\n\nA document in the container.\n")
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "SYNCD_SOURCES": f'[{{"name": "docs", "path": "{docs}"}}]',
        "SYNCD_STATE__PATH": str(tmp_path / "state.db"),
        "SYNCD_QDRANT__PATH": str(tmp_path / "q"),
    }
    version = subprocess.run(
        [str(venv / "bin" / "syncd"), "--version"], capture_output=True, text=True, env=env
    )
    assert version.returncode == 0 and version.stdout.startswith("syncd ")
    out = subprocess.run(
        [str(venv / "bin" / "syncd"), "resync", "-c", str(ROOT / "docker" / "config.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("added 1")

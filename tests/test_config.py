"""``pyra config`` end to end, the dotted-key helpers, and exit status 78 on an invalid file.

Edits go through a stand-in ``$EDITOR`` (a small script that rewrites the file it is given),
so ``pyra config edit`` runs exactly as with a person's editor.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pyra_client.errors import ConfigError, ExitCode
from pyra_daemon.config import Config, get_key, set_key
from tests.conftest import DaemonHandle, clean_env
from tests.fakes.llm_server import FakeLLMServer

EDITOR = """\
import os, sys
path = sys.argv[1]
with open(path, encoding="utf-8") as file:
    text = file.read()
with open(path, "w", encoding="utf-8") as file:
    file.write(text.replace(os.environ["EDIT_FROM"], os.environ["EDIT_TO"]))
"""


@pytest.fixture
def pyra_home(pyra_home: Path) -> Path:
    """The shared test home, without litellm's background import: most tests here never ask,
    and a daemon stops only once an import in flight has finished."""
    config = pyra_home / "config.toml"
    config.write_text(config.read_text().replace("[daemon]\n", "[daemon]\nwarm_up = false\n"))
    return pyra_home


def test_show_prints_the_effective_config_with_defaults(daemon: DaemonHandle) -> None:
    shown = daemon.cli("config", "show")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"# {daemon.layout.config_file}\n")
    assert "[llm]" in shown.stdout
    assert 'provider = "openai-compatible"' in shown.stdout
    assert "max_tool_rounds = 10" in shown.stdout  # a default, not in the file
    assert "# llm.temperature is not set" in shown.stdout
    values = json.loads(daemon.cli("config", "show", "--json").stdout)
    assert values["llm"]["timeout"] == 10
    assert values["daemon"]["transport"] == "unix"


def test_get_prints_one_value_and_names_unknown_keys(daemon: DaemonHandle) -> None:
    assert daemon.cli("config", "get", "llm.model").stdout == "fake-model\n"
    assert daemon.cli("config", "get", "llm.timeout").stdout == "10.0\n"
    assert daemon.cli("config", "get", "llm.temperature").stdout == ""
    section = json.loads(daemon.cli("config", "get", "daemon", "--json").stdout)
    assert section["log_level"] == "DEBUG"
    unknown = daemon.cli("config", "get", "llm.modle")
    assert unknown.returncode == ExitCode.CONFIG
    assert "unknown config key 'llm.modle'" in unknown.stderr
    assert "model" in unknown.stderr  # the known keys are listed


def test_set_validates_saves_0600_and_applies_at_once(
    daemon: DaemonHandle, fake_llm: FakeLLMServer
) -> None:
    path = daemon.layout.config_file
    changed = daemon.cli("config", "set", "llm.system_prompt", "You are a test double.")
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout == "llm.system_prompt = You are a test double.\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "You are a test double." in path.read_text()
    assert daemon.cli("ask", "hi").returncode == 0
    system = fake_llm.last_request().body["messages"][0]
    assert system == {"role": "system", "content": "You are a test double."}

    before = path.read_bytes()
    negative = daemon.cli("config", "set", "llm.timeout", "-3")
    assert negative.returncode == ExitCode.CONFIG
    assert "llm.timeout: Input should be greater than 0" in negative.stderr
    unknown = daemon.cli("config", "set", "llm.nope", "1")
    assert unknown.returncode == ExitCode.CONFIG
    assert "unknown config key 'llm.nope'" in unknown.stderr
    section = daemon.cli("config", "set", "llm", "1")
    assert section.returncode == ExitCode.CONFIG
    assert "is a section" in section.stderr
    assert path.read_bytes() == before
    assert daemon.cli("config", "get", "llm.timeout").stdout == "10.0\n"

    listed = daemon.cli("config", "set", "plugins.disabled", '["weather"]')
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == 'plugins.disabled = ["weather"]\n'
    port = daemon.cli("config", "set", "daemon.tcp_port", "8765")
    assert port.returncode == 0
    assert "pyra daemon restart" in port.stdout
    flag = daemon.cli("config", "set", "daemon.warm_up", "false")
    assert flag.stdout == "daemon.warm_up = false\n"


def write_editor(directory: Path) -> str:
    script = directory / "editor.py"
    script.write_text(EDITOR)
    return f"{sys.executable} {script}"


def test_edit_applies_a_valid_edit_and_keeps_the_config_on_an_invalid_one(
    daemon: DaemonHandle, short_dir: Path
) -> None:
    path = daemon.layout.config_file
    env = dict(daemon.env, EDITOR=write_editor(short_dir))
    env.pop("VISUAL", None)

    valid = dict(env, EDIT_FROM="timeout = 10", EDIT_TO="timeout = 42  # slow model")
    edited = daemon.cli("config", "edit", env=valid)
    assert edited.returncode == 0, edited.stderr
    assert "saved" in edited.stdout
    assert "timeout = 42  # slow model" in path.read_text()  # the text as written
    assert daemon.cli("config", "get", "llm.timeout").stdout == "42.0\n"

    before = path.read_bytes()
    invalid = dict(env, EDIT_FROM="timeout = 42", EDIT_TO="timeout = -1")
    refused = daemon.cli("config", "edit", env=invalid)
    assert refused.returncode == ExitCode.CONFIG
    assert "llm.timeout" in refused.stderr
    kept = refused.stderr.split("your edit is kept in ")[1].strip()
    assert "timeout = -1" in Path(kept).read_text()
    Path(kept).unlink()
    assert path.read_bytes() == before
    assert daemon.cli("config", "get", "llm.timeout").stdout == "42.0\n"

    untouched = daemon.cli("config", "edit", env=dict(env, EDIT_FROM="zzz", EDIT_TO="y"))
    assert untouched.returncode == 0
    assert untouched.stdout == "no changes\n"


def test_reload_reports_an_invalid_file_and_keeps_the_running_config(
    daemon: DaemonHandle,
) -> None:
    path = daemon.layout.config_file
    good = path.read_text()
    path.write_text(good.replace("timeout = 10", "timeout = 0"))
    refused = daemon.cli("config", "reload")
    assert refused.returncode == ExitCode.CONFIG
    assert "llm.timeout" in refused.stderr
    assert daemon.cli("config", "get", "llm.timeout").stdout == "10.0\n"
    path.write_text(good.replace("timeout = 10", "timeout = 20"))
    assert daemon.cli("config", "reload").returncode == 0
    assert daemon.cli("config", "get", "llm.timeout").stdout == "20.0\n"


def test_an_invalid_config_stops_the_daemon_with_status_78_naming_the_keys(
    pyra_home: Path,
) -> None:
    (pyra_home / "config.toml").write_text('[llm]\ntimeout = -1\nmodle = "x"\n')
    result = subprocess.run(
        [sys.executable, "-m", "pyra_daemon"],
        env=clean_env(pyra_home),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 78
    assert "llm.timeout: Input should be greater than 0" in result.stderr
    assert "llm.modle: Extra inputs are not permitted" in result.stderr
    assert result.stderr.count("\n") == 1


def test_dotted_keys_reach_plugin_tables_and_refuse_unknown_keys() -> None:
    config = set_key(Config(), "plugins.weather", {"city": "Paris"})
    config = set_key(config, "plugins.weather.city", "Lyon")
    assert get_key(config, "plugins.weather.city") == "Lyon"
    config = set_key(config, "plugins.weather.units", "metric")  # free-form table
    assert get_key(config, "plugins.weather") == {"city": "Lyon", "units": "metric"}
    with pytest.raises(ConfigError, match=r"unknown config key 'nope\.x' \(known sections"):
        get_key(config, "nope.x")
    with pytest.raises(ConfigError, match=r"llm\.timeout is a value"):
        set_key(config, "llm.timeout.x", 1)

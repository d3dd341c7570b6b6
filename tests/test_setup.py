"""``pyra setup`` end to end: flags and the wizard (on a real pty), the key into the vault.

The fake LLM server here requires the key (``require_key``), so an answer proves that the key
went from stdin or the hidden prompt into the vault and from the vault into the request.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyra_client.errors import ExitCode, ProviderUnavailable
from pyra_client.protocol import SetupModelsParams, SetupModelsResult
from tests.conftest import PYRA, DaemonHandle, clean_env
from tests.fakes.llm_server import FakeLLMServer
from tests.terminal import Terminal

KEY = "setup-test-key-5f0c1e2d3b4a"
NEW_KEY = "setup-test-key-replaced-77aa"


@pytest.fixture
def pyra_home(pyra_home: Path) -> Path:
    """The shared test home, without litellm's background import: most tests here never ask,
    and a daemon stops only once an import in flight has finished."""
    config = pyra_home / "config.toml"
    config.write_text(config.read_text().replace("[daemon]\n", "[daemon]\nwarm_up = false\n"))
    return pyra_home


@pytest.fixture
def keyed_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(require_key=KEY, models=("fake-model", "fake-large")) as server:
        yield server
        assert not server.errors, server.errors


@pytest.fixture
def bare_daemon(pyra_home: Path) -> Iterator[DaemonHandle]:
    """A daemon with no provider configured and no key in its environment."""
    env = clean_env(pyra_home)
    del env["FAKE_KEY"]
    handle = DaemonHandle(home=pyra_home, env=env)
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


def setup_args(llm: FakeLLMServer, *extra: str) -> list[str]:
    return [
        "setup",
        "--provider",
        "openai-compatible",
        "--model",
        "fake-model",
        "--base-url",
        llm.base_url,
        *extra,
    ]


def config_file(daemon: DaemonHandle) -> dict[str, object]:
    return tomllib.loads(daemon.layout.config_file.read_text())


def test_setup_with_api_key_stdin_keeps_the_key_in_the_vault_only(
    bare_daemon: DaemonHandle, keyed_llm: FakeLLMServer
) -> None:
    result = bare_daemon.cli(*setup_args(keyed_llm, "--api-key-stdin"), input=KEY + "\n")
    assert result.returncode == 0, result.stderr
    assert "openai-compatible / fake-model" in result.stdout
    assert "stored in the vault as provider:openai-compatible" in result.stdout
    assert bare_daemon.cli("vault", "list").stdout == "provider:openai-compatible\n"
    assert KEY not in bare_daemon.layout.config_file.read_text()
    assert KEY not in result.stdout + result.stderr

    keyed_llm.enqueue_text("hello with the vault key")
    ask = bare_daemon.cli("ask", "hi")
    assert ask.returncode == 0, ask.stderr
    assert ask.stdout == "hello with the vault key\n"


def test_running_setup_again_keeps_other_settings_and_replaces_the_key_only_when_given(
    bare_daemon: DaemonHandle, keyed_llm: FakeLLMServer
) -> None:
    first = bare_daemon.cli(*setup_args(keyed_llm, "--api-key-stdin"), input=KEY)
    assert first.returncode == 0, first.stderr
    assert bare_daemon.cli("config", "set", "llm.timeout", "33").returncode == 0

    again = bare_daemon.cli("setup", "--provider", "openai-compatible", "--model", "fake-large")
    assert again.returncode == 0, again.stderr
    llm = config_file(bare_daemon)["llm"]
    assert llm == {  # type: ignore[comparison-overlap]
        "provider": "openai-compatible",
        "model": "fake-large",
        "base_url": keyed_llm.base_url,  # kept: same provider, none given
        "timeout": 33.0,
        "retries": 0,
    }
    assert config_file(bare_daemon)["daemon"] == {
        "shutdown_grace": 5.0,
        "log_level": "DEBUG",
        "warm_up": False,
    }
    assert bare_daemon.cli("ask", "still keyed").returncode == 0

    keyed_llm.require_key = NEW_KEY
    replaced = bare_daemon.cli(*setup_args(keyed_llm, "--api-key-stdin"), input=NEW_KEY)
    assert replaced.returncode == 0, replaced.stderr
    assert bare_daemon.cli("ask", "new key").returncode == 0
    assert keyed_llm.last_request().headers["authorization"] == f"Bearer {NEW_KEY}"


def test_the_connection_check_reports_success_and_failure_in_one_line(
    bare_daemon: DaemonHandle, keyed_llm: FakeLLMServer
) -> None:
    ok = bare_daemon.cli(*setup_args(keyed_llm, "--api-key-stdin", "--check"), input=KEY)
    assert ok.returncode == 0, ok.stderr
    assert "✓ fake-model answered in" in ok.stdout
    probe = keyed_llm.last_request().body
    assert probe["max_tokens"] == 1

    keyed_llm.enqueue_error(401)
    failed = bare_daemon.cli(*setup_args(keyed_llm, "--check"))
    assert failed.returncode == ExitCode.PROVIDER_AUTH
    assert "✗ connection check failed:" in failed.stderr
    assert "rejected the API key" in failed.stderr


def test_setup_models_lists_the_servers_models_with_the_typed_or_stored_key(
    bare_daemon: DaemonHandle, keyed_llm: FakeLLMServer
) -> None:
    with bare_daemon.connect() as conn:
        typed = conn.call(
            "setup.models",
            SetupModelsParams(
                provider="openai-compatible", base_url=keyed_llm.base_url, api_key=KEY
            ),
            SetupModelsResult,
        )
        assert typed.models == ["fake-large", "fake-model"]
        assert typed.source == f"{keyed_llm.base_url}/models"
        request = keyed_llm.last_request()
        assert (request.method, request.path) == ("GET", "/v1/models")
        assert request.headers["authorization"] == f"Bearer {KEY}"

        unsupported = conn.call(
            "setup.models", SetupModelsParams(provider="anthropic"), SetupModelsResult
        )
        assert unsupported.supported is False
        with pytest.raises(
            ProviderUnavailable, match=re.escape("cannot reach http://127.0.0.1:9/v1")
        ):
            conn.call(
                "setup.models",
                SetupModelsParams(provider="openai-compatible", base_url="http://127.0.0.1:9/v1"),
                SetupModelsResult,
            )


def test_the_wizard_asks_on_a_terminal_and_never_shows_the_key(
    bare_daemon: DaemonHandle, keyed_llm: FakeLLMServer
) -> None:
    wizard = Terminal([PYRA, "setup"], bare_daemon.env)
    wizard.expect("7. Any OpenAI-compatible server")
    wizard.expect("Provider [1]: ")
    wizard.send("7")
    wizard.expect("Base URL of the server [http://127.0.0.1:8000/v1]: ")
    wizard.send(keyed_llm.base_url)
    wizard.expect("API key for Any OpenAI-compatible server (hidden; Enter if the server needs")
    wizard.send(KEY)
    wizard.expect(" 2. fake-model")
    wizard.expect("Model (number or name) [fake-large]: ")
    wizard.send("2")
    assert wizard.wait() == 0, wizard.output
    assert "The API key is stored in the vault as provider:openai-compatible." in wizard.output
    assert "✓ fake-model answered in" in wizard.output
    assert KEY not in wizard.output
    assert config_file(bare_daemon)["llm"]["model"] == "fake-model"  # type: ignore[index]

    # Again: every answer defaults to the current setting and Enter keeps the stored key.
    again = Terminal([PYRA, "setup"], bare_daemon.env)
    again.expect("Provider [7]: ")
    again.send("")
    again.expect(f"Base URL of the server [{keyed_llm.base_url}]: ")
    again.send("")
    again.expect("(hidden; Enter keeps the stored key): ")
    again.send("")
    again.expect("Model (number or name) [fake-model]: ")
    again.send("")
    assert again.wait() == 0, again.output
    assert "The API key is stored" not in again.output
    assert "✓ fake-model answered in" in again.output


def test_setup_usage_errors(bare_daemon: DaemonHandle) -> None:
    unknown = bare_daemon.cli("setup", "--provider", "nope")
    assert unknown.returncode == ExitCode.USAGE
    assert "unknown provider 'nope'" in unknown.stderr
    no_terminal = bare_daemon.cli("setup")
    assert no_terminal.returncode == ExitCode.USAGE
    assert "no terminal" in no_terminal.stderr
    key_without_provider = bare_daemon.cli("setup", "--api-key-stdin", input=KEY)
    assert key_without_provider.returncode == ExitCode.USAGE
    assert "--api-key-stdin needs --provider" in key_without_provider.stderr
    no_url = bare_daemon.cli("setup", "--provider", "openai-compatible")
    assert no_url.returncode == ExitCode.USAGE
    assert "needs a base URL" in no_url.stderr
    pasted = bare_daemon.cli("setup", "--provider", "openai", "--api-key-env", KEY + "-x y")
    assert pasted.returncode == ExitCode.CONFIG
    assert "must name an environment variable" in pasted.stderr
    assert KEY not in pasted.stderr
    assert "provider" not in bare_daemon.layout.config_file.read_text()

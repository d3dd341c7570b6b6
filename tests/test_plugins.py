"""Plugins: discovery, isolation, supervision, live enable/disable, install, and the example.

Two layers. Most tests drive a :class:`PluginManager` in this process with real directory
plugins written to a private home, a real :class:`Supervisor` (fake clock and sleep where
back-off is observed) and a :class:`ToolShelf` standing in for the tool registry. The last
tests run the real daemon process and the ``pyra plugin`` CLI against it.
"""

from __future__ import annotations

import http.server
import importlib.metadata
import json
import os
import shutil
import signal
import textwrap
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
import tomli_w

from pyra_client.errors import AccessDenied, NotConfigured, NotFound, SecretNotFound, UsageError
from pyra_client.paths import Layout
from pyra_client.protocol import Empty, PluginListResult, StatusResult
from pyra_daemon.config import Config, load_config, save_config
from pyra_daemon.pathguard import PathGuard
from pyra_daemon.plugins import PluginManager, Source, ToolShelf, discover
from pyra_daemon.secret import Secret
from pyra_daemon.supervisor import RestartPolicy, Supervisor, TaskState
from tests.conftest import DaemonHandle

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "weather_plugin"

pytestmark = pytest.mark.timeout(30)


# --- helpers --------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSleep:
    """Records each back-off and advances the fake clock instead of waiting."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.now += seconds
        await anyio.lowlevel.checkpoint()


class DictVault:
    """The vault's get/set/names over a dict, recording every name asked for."""

    def __init__(self, values: dict[str, str] | None = None) -> None:
        self.values = dict(values or {})
        self.asked: list[str] = []

    def get(self, name: str) -> Secret:
        self.asked.append(name)
        try:
            return Secret(self.values[name])
        except KeyError:
            raise SecretNotFound(name) from None

    def set(self, name: str, value: Secret) -> None:
        self.values[name] = value.reveal()

    def names(self) -> list[str]:
        return sorted(self.values)


def write_plugin(
    plugins_dir: Path,
    name: str,
    body: str,
    *,
    manifest: dict[str, Any] | None = None,
    extra: dict[str, str] | None = None,
) -> Path:
    folder = plugins_dir / name
    folder.mkdir(mode=0o700, parents=True)
    data = {"name": name, "version": "0.1", "description": f"the {name} plugin"}
    data.update(manifest or {})
    (folder / "manifest.json").write_text(json.dumps(data))
    (folder / "plugin.py").write_text(textwrap.dedent(body))
    for filename, text in (extra or {}).items():
        (folder / filename).write_text(textwrap.dedent(text))
    for path in folder.iterdir():
        path.chmod(0o600)
    return folder


GOOD = """
    from pyra_daemon.plugin_api import Plugin, PluginContext, SlashCommand, tool

    @tool(read_only=True)
    def shout(text: str) -> str:
        '''Repeat text loudly.

        Args:
            text: What to repeat.
        '''
        return text.upper()

    @tool
    async def whoami(ctx: PluginContext) -> str:
        '''Say which plugin this is.'''
        return ctx.name

    @tool(timeout=0.2)
    async def boom(why: str) -> str:
        '''Always fails.'''
        raise RuntimeError(why)

    @tool(timeout=0.2)
    async def hang() -> str:
        '''Never returns.'''
        import anyio
        await anyio.sleep_forever()
        return ""

    def greet(args: str) -> str:
        return f"hello {args}"

    plugin = Plugin(
        name="{name}",
        version="0.1",
        tools=[shout, whoami, boom, hang],
        commands=[SlashCommand("greet", "Say hello", greet)],
        system_prompt="Good plugin is here.",
        config_defaults={"level": 1},
    )
"""


def good(name: str = "good") -> str:
    return GOOD.replace("{name}", name)


class Harness:
    """A manager over a private home, with the config kept in memory and on disk."""

    def __init__(self, home: Path, *, vault: DictVault | None = None) -> None:
        self.layout = Layout(home)
        for folder in (home, self.layout.vault_dir, self.layout.plugins_dir, self.layout.run_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.layout.vault_dir / "secrets.age").write_text("secret stuff")
        self.config = Config.model_validate({"plugins": {"load_timeout": 2}})
        self.tools = ToolShelf()
        self.vault = vault
        self.entry_points: list[Source] = []
        self.guard = PathGuard.for_layout(self.layout)
        self.manager = PluginManager(
            self.layout,
            config=lambda: self.config,
            save_config=self.save,
            tools=self.tools,
            guard=self.guard,
            vault=lambda: self.vault,
            discoverer=self.discover,
        )

    def discover(self) -> list[Source]:
        # The installed entry points (the bundled system plugin) are left out on purpose:
        # each test states exactly which plugins exist.
        found = [s for s in discover(self.layout, self.guard) if s.kind == "directory"]
        return [*self.entry_points, *found]

    def save(self, config: Config) -> None:
        save_config(config, self.layout.config_file)
        self.config = config

    def set_config(self, data: dict[str, Any]) -> None:
        self.config = Config.model_validate(data)

    def view(self, name: str) -> Any:
        return {p.name: p for p in self.manager.list_plugins().plugins}[name]


@pytest.fixture
def harness(short_dir: Path) -> Harness:
    return Harness(short_dir / "home")


# --- loading and isolation ------------------------------------------------------------------------


async def test_directory_plugin_is_loaded_with_tools_commands_and_prompt(harness: Harness) -> None:
    async with Supervisor(testing=True) as supervisor:
        write_plugin(harness.layout.plugins_dir, "good", good())
        await harness.manager.start(supervisor)
        view = harness.view("good")
        assert (view.state, view.source, view.enabled, view.error) == (
            "active",
            "directory",
            True,
            None,
        )
        assert [t.name for t in view.tools] == ["shout", "whoami", "boom", "hang"]
        assert view.commands == ["greet"]
        shout = harness.tools.tools["shout"]
        assert shout.plugin == "good"
        assert shout.read_only
        assert shout.parameters["properties"]["text"]["description"] == "What to repeat."
        # The context parameter is bound by the loader and kept out of the schema.
        whoami = harness.tools.tools["whoami"]
        assert "ctx" not in whoami.parameters["properties"]
        assert await whoami.handler() == "good"
        assert harness.manager.system_prompt() == "Good plugin is here."
        assert harness.manager.plugin_config("good") == {"level": 1}
        result = await harness.manager.run_command("greet", "world")
        assert (result.ok, result.text) == (True, "hello world")


async def test_plugin_raising_on_import_is_isolated(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    async with Supervisor(testing=True) as supervisor:
        write_plugin(harness.layout.plugins_dir, "good", good())
        write_plugin(harness.layout.plugins_dir, "broken", "raise RuntimeError('import boom')\n")
        await harness.manager.start(supervisor)
        broken = harness.view("broken")
        assert broken.state == "error"
        assert broken.error == "import failed: RuntimeError: import boom"
        assert broken.tools == []
        assert harness.view("good").state == "active"
        info = await harness.manager.info("broken")
        assert info.traceback is not None
        assert "import boom" in info.traceback
        assert "plugin.py" in info.traceback
        assert "import boom" in caplog.text  # logged with its traceback
        assert "pyra_dirplugin_broken" not in __import__("sys").modules


async def test_entry_point_that_fails_to_import_is_isolated(harness: Harness) -> None:
    async with Supervisor(testing=True) as supervisor:
        ep = importlib.metadata.EntryPoint(
            name="ghost", value="tests.no_such_module_here:plugin", group="pyra.plugins"
        )
        harness.entry_points.append(
            Source(kind="entry-point", name="ghost", location=ep.value, entry_point=ep)
        )
        write_plugin(harness.layout.plugins_dir, "good", good())
        await harness.manager.start(supervisor)
        ghost = harness.view("ghost")
        assert (ghost.state, ghost.source) == ("error", "entry-point")
        assert ghost.error is not None
        assert "ModuleNotFoundError" in ghost.error
        assert harness.view("good").state == "active"


async def test_plugin_raising_in_setup_is_isolated(harness: Harness) -> None:
    async with Supervisor(testing=True) as supervisor:
        write_plugin(
            harness.layout.plugins_dir,
            "picky",
            """
            from pyra_daemon.plugin_api import Plugin, tool

            @tool
            def never(x: str) -> str:
                '''Never registered.'''
                return x

            async def setup(ctx):
                raise ValueError("missing [plugins.picky] url")

            plugin = Plugin(name="picky", tools=[never], setup=setup)
            """,
        )
        await harness.manager.start(supervisor)
        view = harness.view("picky")
        assert view.state == "error"
        assert view.error == "setup failed: ValueError: missing [plugins.picky] url"
        assert "never" not in harness.tools.tools


async def test_hanging_setup_and_import_time_out(harness: Harness) -> None:
    async with Supervisor(testing=True) as supervisor:
        harness.set_config({"plugins": {"load_timeout": 0.3}})
        write_plugin(
            harness.layout.plugins_dir,
            "slowsetup",
            """
            import anyio
            from pyra_daemon.plugin_api import Plugin

            async def setup(ctx):
                await anyio.sleep(60)

            plugin = Plugin(name="slowsetup", setup=setup)
            """,
        )
        write_plugin(
            harness.layout.plugins_dir,
            "slowimport",
            "import time\ntime.sleep(1.5)\nfrom pyra_daemon.plugin_api import Plugin\n"
            "plugin = Plugin(name='slowimport')\n",
        )
        write_plugin(harness.layout.plugins_dir, "good", good())
        started = time.monotonic()
        await harness.manager.start(supervisor)
        assert time.monotonic() - started < 1.2  # both timed out concurrently, nobody waited
        assert (
            harness.view("slowsetup").error
            == "setup failed: TimeoutError: setup took longer than 0.3 s"
        )
        assert harness.view("slowimport").error == (
            "import failed: TimeoutError: the import took longer than 0.3 s"
        )
        assert harness.view("good").state == "active"


async def test_tool_raising_or_hanging_at_call_time_leaves_the_plugin_active(
    harness: Harness,
) -> None:
    async with Supervisor(testing=True) as supervisor:
        write_plugin(harness.layout.plugins_dir, "good", good())
        await harness.manager.start(supervisor)
        boom = harness.tools.tools["boom"]
        with pytest.raises(RuntimeError, match="kaboom"):
            await boom.handler(why="kaboom")
        hang = harness.tools.tools["hang"]
        assert hang.timeout == 0.2  # the executor cancels it after this
        with pytest.raises(TimeoutError), anyio.fail_after(hang.timeout):
            await hang.handler()
        view = harness.view("good")
        assert (view.state, view.error) == ("active", None)
        assert "shout" in harness.tools.tools


async def test_plugin_object_must_match_its_name_and_api(harness: Harness) -> None:
    async with Supervisor(testing=True) as supervisor:
        write_plugin(harness.layout.plugins_dir, "liar", good("someone-else"))
        write_plugin(harness.layout.plugins_dir, "nothing", "x = 1\n")
        write_plugin(
            harness.layout.plugins_dir,
            "rude",
            """
            from pyra_daemon.plugin_api import Plugin, SlashCommand
            plugin = Plugin(name="rude", commands=[SlashCommand("help", "mine now", str)])
            """,
        )
        await harness.manager.start(supervisor)
        assert "is named 'someone-else', but is registered as 'liar'" in (
            harness.view("liar").error or ""
        )
        assert "expected a pyra_daemon.plugin_api.Plugin, got NoneType" in (
            harness.view("nothing").error or ""
        )
        assert "/help is a built-in chat command" in (harness.view("rude").error or "")


async def test_tool_name_taken_by_another_plugin_isolates_the_second(harness: Harness) -> None:
    async with Supervisor(testing=True) as supervisor:
        for name in ("alpha", "beta"):  # the same tools, and no commands to clash first
            body = good(name).replace('commands=[SlashCommand("greet", "Say hello", greet)],', "")
            write_plugin(harness.layout.plugins_dir, name, body)
        await harness.manager.start(supervisor)
        states = {harness.view("alpha").state, harness.view("beta").state}
        assert states == {"active", "error"}
        loser = "alpha" if harness.view("alpha").state == "error" else "beta"
        winner = "beta" if loser == "alpha" else "alpha"
        assert harness.view(loser).error == (
            "registration failed: ValueError: a tool named 'shout' is already provided by " + winner
        )
        # Nothing of the loser stayed registered half-way.
        assert {t.plugin for t in harness.tools.tools.values()} == {winner}
        assert len(harness.tools.tools) == 4


async def test_plugin_modules_import_their_siblings_relatively(harness: Harness) -> None:
    async with Supervisor(testing=True) as supervisor:
        write_plugin(
            harness.layout.plugins_dir,
            "pkg",
            """
            from pyra_daemon.plugin_api import Plugin
            from . import helpers
            plugin = Plugin(name="pkg", system_prompt=helpers.PROMPT)
            """,
            extra={"helpers.py": "PROMPT = 'from a sibling module'\n"},
        )
        await harness.manager.start(supervisor)
        assert harness.view("pkg").state == "active"
        assert harness.manager.system_prompt() == "from a sibling module"


# --- file-system rules for directory plugins ------------------------------------------------------


async def test_plugin_folder_symlinked_into_the_vault_is_refused(harness: Harness) -> None:
    async with Supervisor(testing=True) as supervisor:
        (harness.layout.plugins_dir / "evil").symlink_to(harness.layout.vault_dir)
        await harness.manager.start(supervisor)
        view = harness.view("evil")
        assert view.state == "error"
        assert "private files" in (view.error or "")


async def test_entry_file_symlinked_to_a_vault_file_is_refused(harness: Harness) -> None:
    async with Supervisor(testing=True) as supervisor:
        folder = write_plugin(harness.layout.plugins_dir, "sneaky", good("sneaky"))
        (folder / "plugin.py").unlink()
        (folder / "plugin.py").symlink_to(harness.layout.vault_dir / "secrets.age")
        await harness.manager.start(supervisor)
        view = harness.view("sneaky")
        assert view.state == "error"
        assert "AccessDenied" in (view.error or "")
        assert "private files" in (view.error or "")


async def test_symlink_leaving_the_plugin_folder_is_refused(
    harness: Harness, short_dir: Path
) -> None:
    async with Supervisor(testing=True) as supervisor:
        elsewhere = short_dir / "elsewhere.py"
        elsewhere.write_text("x = 1\n")
        folder = write_plugin(harness.layout.plugins_dir, "leaky", good("leaky"))
        (folder / "helper.py").symlink_to(elsewhere)
        await harness.manager.start(supervisor)
        assert "leaves the plugin folder" in (harness.view("leaky").error or "")


async def test_writable_by_others_is_refused(harness: Harness) -> None:
    async with Supervisor(testing=True) as supervisor:
        folder = write_plugin(harness.layout.plugins_dir, "loose", good("loose"))
        (folder / "plugin.py").chmod(0o622)
        await harness.manager.start(supervisor)
        view = harness.view("loose")
        assert view.state == "error"
        assert "writable by other users" in (view.error or "")


async def test_bad_manifests_are_reported(harness: Harness) -> None:
    async with Supervisor(testing=True) as supervisor:
        write_plugin(harness.layout.plugins_dir, "mismatch", good(), manifest={"name": "other"})
        write_plugin(harness.layout.plugins_dir, "escape", good(), manifest={"entry": "../x.py"})
        folder = write_plugin(harness.layout.plugins_dir, "garbled", good())
        (folder / "manifest.json").write_text("{not json")
        await harness.manager.start(supervisor)
        assert "its folder is 'mismatch'" in (harness.view("mismatch").error or "")
        assert "relative .py path" in (harness.view("escape").error or "")
        assert "not valid JSON" in (harness.view("garbled").error or "")


# --- supervision ----------------------------------------------------------------------------------


CRASHY = """
    from pyra_daemon.plugin_api import Plugin

    runs = []

    async def poll(ctx):
        runs.append(1)
        raise ConnectionError(f"platform unreachable (run {len(runs)})")

    plugin = Plugin(name="crashy", tasks=[poll])
"""


async def test_crash_looping_task_backs_off_and_trips_the_breaker(harness: Harness) -> None:
    write_plugin(harness.layout.plugins_dir, "crashy", CRASHY)
    write_plugin(harness.layout.plugins_dir, "good", good())
    clock = FakeClock()
    sleep = FakeSleep(clock)
    policy = RestartPolicy(base_delay=1.0, max_delay=60.0, max_failures=5, window=300.0)
    async with Supervisor(policy=policy, clock=clock, sleep=sleep, random=lambda: 1.0) as sup:
        await harness.manager.start(sup)
        assert harness.view("crashy").tasks == ["crashy.poll"]
        with anyio.fail_after(5):
            while sup.info("crashy.poll").state is not TaskState.FAILED:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        info = sup.info("crashy.poll")
        assert sleep.delays == [1.0, 2.0, 4.0, 8.0, 16.0]  # exponential back-off, then give up
        assert info.restarts == 5
        assert info.last_error == "ConnectionError: platform unreachable (run 6)"
        # The plugin itself stays active (its tools would still work); other plugins too.
        assert harness.view("crashy").state == "active"
        assert harness.view("good").state == "active"


async def test_disable_stops_tasks_and_enable_restarts_them_live(harness: Harness) -> None:
    async with Supervisor(testing=True) as supervisor:
        write_plugin(
            harness.layout.plugins_dir,
            "ticker",
            """
            import anyio
            from pyra_daemon.plugin_api import Plugin, SlashCommand, tool

            @tool(read_only=True)
            def tick() -> str:
                '''Tick.'''
                return "tock"

            async def loop(ctx):
                await anyio.sleep_forever()

            torn = []

            async def teardown(ctx):
                torn.append(ctx.name)

            plugin = Plugin(
                name="ticker",
                tools=[tick],
                commands=[SlashCommand("tick", "Tick", lambda args: "tock")],
                tasks=[loop],
                teardown=teardown,
            )
            """,
        )
        await harness.manager.start(supervisor)
        await anyio.sleep(0.01)
        assert supervisor.info("ticker.loop").state is TaskState.RUNNING

        view = await harness.manager.disable("ticker")
        assert (view.state, view.enabled, view.tools, view.tasks) == ("disabled", False, [], [])
        assert "tick" not in harness.tools.tools
        assert [c.name for c in harness.manager.commands().commands] == []
        assert [t.name for t in supervisor.status()] == []
        assert harness.config.plugins.disabled == ["ticker"]
        assert load_config(harness.layout.config_file).plugins.disabled == ["ticker"]
        with pytest.raises(NotFound):
            await harness.manager.run_command("tick", "")

        view = await harness.manager.enable("ticker")
        assert (view.state, view.enabled) == ("active", True)
        assert "tick" in harness.tools.tools
        assert load_config(harness.layout.config_file).plugins.disabled == []
        await anyio.sleep(0.01)
        assert supervisor.info("ticker.loop").state is TaskState.RUNNING


async def test_disabled_plugin_is_never_imported(harness: Harness) -> None:
    async with Supervisor(testing=True) as supervisor:
        write_plugin(harness.layout.plugins_dir, "bomb", "raise SystemExit('must not run')\n")
        harness.set_config({"plugins": {"disabled": ["bomb"]}})
        await harness.manager.start(supervisor)
        view = harness.view("bomb")
        assert (view.state, view.enabled, view.error) == ("disabled", False, None)


async def test_enable_retries_a_plugin_after_it_was_fixed(harness: Harness) -> None:
    async with Supervisor(testing=True) as supervisor:
        folder = write_plugin(harness.layout.plugins_dir, "flaky", "raise ImportError('not yet')\n")
        await harness.manager.start(supervisor)
        assert harness.view("flaky").state == "error"
        (folder / "plugin.py").write_text(textwrap.dedent(good("flaky")))
        view = await harness.manager.enable("flaky")
        assert (view.state, view.error) == ("active", None)


async def test_new_directory_plugin_is_found_without_a_restart(harness: Harness) -> None:
    async with Supervisor(testing=True) as supervisor:
        await harness.manager.start(supervisor)
        write_plugin(harness.layout.plugins_dir, "late", good("late"))
        info = await harness.manager.info("late")
        assert info.plugin.state == "active"
        with pytest.raises(NotFound):
            await harness.manager.info("nonexistent")


async def test_reload_applies_the_config_and_picks_up_new_plugins(harness: Harness) -> None:
    write_plugin(harness.layout.plugins_dir, "alpha", good("alpha"))
    folder = write_plugin(harness.layout.plugins_dir, "flaky", "raise ImportError('x')\n")
    async with Supervisor(testing=True) as supervisor:
        await harness.manager.start(supervisor)
        assert harness.view("flaky").state == "error"
        # The person edits config.toml and the plugin folder, then sends SIGHUP.
        harness.set_config({"plugins": {"disabled": ["alpha"]}})
        write_plugin(harness.layout.plugins_dir, "late", good("late").replace("shout", "yell"))
        (folder / "plugin.py").write_text(
            "from pyra_daemon.plugin_api import Plugin\nplugin = Plugin(name='flaky')\n"
        )
        await harness.manager.reload()
        assert harness.view("alpha").state == "disabled"
        assert "shout" not in harness.tools.tools
        assert harness.view("late").state == "active"
        assert harness.view("flaky").state == "active"
        harness.set_config({})
        await harness.manager.reload()
        assert harness.view("alpha").state == "error"  # its /greet now clashes with late's
        assert harness.view("alpha").error == (
            "validation failed: ValueError: /greet is already provided by plugin 'late'"
        )


async def test_failing_command_is_reported_not_raised(harness: Harness) -> None:
    async with Supervisor(testing=True) as supervisor:
        write_plugin(
            harness.layout.plugins_dir,
            "cmds",
            """
            from pyra_daemon.plugin_api import Plugin, SlashCommand

            def bad(args):
                raise KeyError(args)

            plugin = Plugin(name="cmds", commands=[SlashCommand("bad", "fails", bad)])
            """,
        )
        await harness.manager.start(supervisor)
        result = await harness.manager.run_command("bad", "x")
        assert result.ok is False
        assert result.text == "/bad failed: KeyError: 'x'"
        assert harness.view("cmds").state == "active"


# --- secrets --------------------------------------------------------------------------------------


SECRETIVE = """
    from pyra_daemon.plugin_api import Plugin, PluginContext, tool

    @tool(read_only=True)
    async def peek(ctx: PluginContext, key: str) -> str:
        '''Read one of the plugin's secrets.'''
        return str(await ctx.read_secret(key))

    @tool
    async def keep(ctx: PluginContext, key: str, value: str) -> str:
        '''Store a secret.'''
        await ctx.write_secret(key, value)
        return "ok"

    plugin = Plugin(name="spy", tools=[peek, keep], secrets={"token": "the API token"})
"""


async def test_secrets_are_limited_to_the_plugins_own_names(short_dir: Path) -> None:
    async with Supervisor(testing=True) as supervisor:
        vault = DictVault({"plugin:spy:token": "t0k3n", "provider:openai": "sk-real"})
        harness = Harness(short_dir / "home", vault=vault)
        write_plugin(harness.layout.plugins_dir, "spy", SECRETIVE)
        await harness.manager.start(supervisor)
        peek = harness.tools.tools["peek"].handler
        assert await peek(key="token") == "t0k3n"
        assert await peek(key="missing") == "None"
        for escape in ("../provider:openai", ":openai", "x:y", "Token", ""):
            with pytest.raises(AccessDenied):
                await peek(key=escape)
        assert all(name.startswith("plugin:spy:") for name in vault.asked)
        await harness.tools.tools["keep"].handler(key="refresh", value="r1")
        assert vault.values["plugin:spy:refresh"] == "r1"
        info = await harness.manager.info("spy")
        assert [(s.secret, s.is_set) for s in info.secrets] == [("plugin:spy:token", True)]


async def test_secret_access_without_a_vault_says_so(harness: Harness) -> None:
    async with Supervisor(testing=True) as supervisor:
        write_plugin(harness.layout.plugins_dir, "spy", SECRETIVE)
        await harness.manager.start(supervisor)
        with pytest.raises(NotConfigured, match="no vault"):
            await harness.tools.tools["peek"].handler(key="token")
        result = await harness.manager.setup("spy")
        assert result.secrets[0].is_set is None
        assert any("pyra vault set plugin:spy:token" in m for m in result.messages)


# --- install --------------------------------------------------------------------------------------


async def test_install_copies_a_plugin_and_activates_it(harness: Harness, short_dir: Path) -> None:
    async with Supervisor(testing=True) as supervisor:
        await harness.manager.start(supervisor)
        view = await harness.manager.install(str(EXAMPLE))
        assert (view.name, view.state, view.source) == ("weather", "active", "directory")
        installed = harness.layout.plugins_dir / "weather"
        assert sorted(p.name for p in installed.iterdir()) == ["manifest.json", "plugin.py"]
        assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in installed.iterdir())
        with pytest.raises(UsageError, match="already installed"):
            await harness.manager.install(str(EXAMPLE))
        view = await harness.manager.install(str(EXAMPLE), replace=True)
        assert view.state == "active"
        assert [p.name for p in harness.layout.plugins_dir.iterdir()] == ["weather"]


async def test_install_refuses_symlinks_and_bad_sources(harness: Harness, short_dir: Path) -> None:
    async with Supervisor(testing=True) as supervisor:
        await harness.manager.start(supervisor)
        source = short_dir / "src"
        shutil.copytree(EXAMPLE, source)
        (source / "stolen.age").symlink_to(harness.layout.vault_dir / "secrets.age")
        with pytest.raises(AccessDenied, match="symlink"):
            await harness.manager.install(str(source))
        (source / "stolen.age").unlink()
        link = short_dir / "link"
        link.symlink_to(source)
        with pytest.raises(AccessDenied, match="symlink"):
            await harness.manager.install(str(link))
        with pytest.raises(UsageError, match="absolute"):
            await harness.manager.install("relative/path")
        with pytest.raises(AccessDenied):
            await harness.manager.install(str(harness.layout.vault_dir))
        assert not (harness.layout.plugins_dir / "weather").exists()
        assert [p.name for p in harness.layout.plugins_dir.iterdir()] == []


# --- the example plugin of docs/plugins.md --------------------------------------------------------


class ForecastAPI:
    """The forecast service the example plugin calls, on loopback."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.requests.append((self.path, self.headers.get("Authorization")))
                if self.headers.get("Authorization") != "Bearer wkey":
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps(
                    {
                        "city": "Lyon",
                        "days": [{"date": "2026-01-01", "summary": "sunny", "high": 9, "low": 1}],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> ForecastAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def forecast_api() -> Iterator[ForecastAPI]:
    with ForecastAPI() as api:
        yield api


async def test_example_weather_plugin_end_to_end_in_the_manager(
    short_dir: Path, forecast_api: ForecastAPI
) -> None:
    async with Supervisor(testing=True) as supervisor:
        vault = DictVault()
        harness = Harness(short_dir / "home", vault=vault)
        harness.set_config({"plugins": {"weather": {"base_url": forecast_api.url}}})
        await harness.manager.start(supervisor)
        await harness.manager.install(str(EXAMPLE))
        view = harness.view("weather")
        assert view.state == "active"
        assert [t.name for t in view.tools] == ["forecast"]
        assert view.commands == ["weather"]
        assert view.tasks == ["weather.keep_home_forecast_warm"]
        forecast = harness.tools.tools["forecast"]
        assert forecast.read_only
        assert forecast.parameters["required"] == ["city"]
        assert "ctx" not in forecast.parameters["properties"]

        setup = await harness.manager.setup("weather")
        assert [(s.secret, s.is_set) for s in setup.secrets] == [("plugin:weather:api_key", False)]
        assert any("pyra vault set plugin:weather:api_key" in m for m in setup.messages)
        with pytest.raises(Exception, match="no API key"):
            await forecast.handler(city="Lyon")

        vault.values["plugin:weather:api_key"] = "wkey"
        text = await forecast.handler(city="Lyon", days=1)
        assert text == "Forecast for Lyon:\n- 2026-01-01: sunny, high 9°C, low 1°C"
        assert forecast_api.requests[-1] == (
            "/v1/forecast?city=Lyon&days=1&units=metric",
            "Bearer wkey",
        )
        result = await harness.manager.run_command("weather", "Lyon")
        assert result.ok
        assert "sunny" in result.text
        assert "forecast tool" in harness.manager.system_prompt()
        # No home_city configured: the warm-up task returned at once and is shown as stopped.
        assert supervisor.info("weather.keep_home_forecast_warm").state is TaskState.STOPPED


async def test_example_weather_plugin_rejects_a_bad_config(harness: Harness) -> None:
    async with Supervisor(testing=True) as supervisor:
        harness.set_config({"plugins": {"weather": {"units": "kelvin"}}})
        await harness.manager.start(supervisor)
        view = await harness.manager.install(str(EXAMPLE))
        assert view.state == "error"
        assert (
            view.error
            == 'setup failed: ValueError: [plugins.weather] units must be "metric" or "imperial"'
        )


# --- config ---------------------------------------------------------------------------------------


def test_plugins_config_accepts_tables_and_rejects_stray_keys() -> None:
    config = Config.model_validate(
        {"plugins": {"disabled": ["telegram"], "weather": {"units": "imperial"}}}
    )
    assert config.plugins.disabled == ["telegram"]
    assert config.plugins.section("weather") == {"units": "imperial"}
    assert config.plugins.section("other") == {}
    with pytest.raises(Exception, match=r"\[plugins.disabeld\] table"):
        Config.model_validate({"plugins": {"disabeld": ["telegram"]}})


# --- the real daemon ------------------------------------------------------------------------------


def _write_home_plugin(home: Path, name: str, body: str) -> None:
    write_plugin(home / "plugins", name, body)
    (home / "plugins").chmod(0o700)


@pytest.fixture
def plugin_daemon(
    pyra_home: Path, fake_llm: Any, forecast_api: ForecastAPI
) -> Iterator[DaemonHandle]:
    """A daemon whose home holds a crash-looping and a broken plugin (testing supervisor)."""
    from tests.conftest import clean_env

    config = (pyra_home / "config.toml").read_text()
    # No litellm warm-up: most of these tests never ask, and stopping waits for the import.
    config = config.replace("[daemon]\n", "[daemon]\nwarm_up = false\n")
    config += f'\n[plugins.weather]\nbase_url = "{forecast_api.url}"\n'
    (pyra_home / "config.toml").write_text(config)
    _write_home_plugin(pyra_home, "crashy", CRASHY)
    _write_home_plugin(pyra_home, "broken", "raise RuntimeError('import boom')\n")
    _write_home_plugin(pyra_home, "faulty", FAULTY)
    env = clean_env(pyra_home)
    env["PYRA_SUPERVISOR_TESTING"] = "1"
    handle = DaemonHandle(home=pyra_home, env=env)
    handle.start()
    handle.configure(fake_llm.base_url)
    try:
        yield handle
    finally:
        handle.stop()


FAULTY = """
    import anyio
    from pyra_daemon.plugin_api import Plugin, tool

    @tool(read_only=True)
    def explode(why: str) -> str:
        '''Always raises.'''
        raise RuntimeError(why)

    @tool(read_only=True, timeout=0.5)
    async def stall() -> str:
        '''Never returns.'''
        await anyio.sleep_forever()
        return ""

    plugin = Plugin(name="faulty", tools=[explode, stall])
"""


def test_tools_raising_or_hanging_at_call_time_do_not_disable_the_plugin(
    plugin_daemon: DaemonHandle, fake_llm: Any
) -> None:
    fake_llm.enqueue_tool_calls([("explode", {"why": "kaboom"}), ("stall", {})])
    fake_llm.enqueue_text("Both tools failed.")
    started = time.monotonic()
    result = plugin_daemon.cli("ask", "use the faulty tools")
    assert result.returncode == 0, result.stderr
    assert "Both tools failed." in result.stdout
    assert time.monotonic() - started < 20
    tool_messages = [
        m["content"] for m in fake_llm.last_request().body["messages"] if m["role"] == "tool"
    ]
    assert any("RuntimeError: kaboom" in m for m in tool_messages)
    assert any("stall timed out after 0.5s" in m for m in tool_messages)
    listing = json.loads(plugin_daemon.cli("plugin", "list", "--json").stdout)
    faulty = {p["name"]: p for p in listing}["faulty"]
    assert (faulty["state"], faulty.get("error")) == ("active", None)
    assert {t["name"] for t in faulty["tools"]} == {"explode", "stall"}


def _status(handle: DaemonHandle) -> StatusResult:
    with handle.connect() as conn:
        return conn.call("status", Empty(), StatusResult)


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_daemon_survives_broken_and_crash_looping_plugins(plugin_daemon: DaemonHandle) -> None:
    def crashy_failed() -> bool:
        tasks = {t.name: t for t in _status(plugin_daemon).tasks}
        return "crashy.poll" in tasks and tasks["crashy.poll"].state == "failed"

    _wait(crashy_failed)
    task = {t.name: t for t in _status(plugin_daemon).tasks}["crashy.poll"]
    assert task.restarts == 5  # testing mode: no back-off, breaker after max_failures + 1 runs
    assert task.last_error == "ConnectionError: platform unreachable (run 6)"
    assert plugin_daemon.process is not None
    assert plugin_daemon.process.poll() is None

    status = plugin_daemon.cli("status")
    assert status.returncode == 0, status.stderr
    assert "task crashy.poll" in status.stdout
    assert "failed, 5 restart(s), last error: ConnectionError: platform unreachable" in (
        status.stdout
    )

    listing = plugin_daemon.cli("plugin", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    plugins = {p["name"]: p for p in json.loads(listing.stdout)}
    assert plugins["broken"]["state"] == "error"
    assert plugins["broken"]["error"] == "import failed: RuntimeError: import boom"
    assert plugins["system"]["state"] == "active"
    assert plugins["system"]["source"] == "entry-point"
    assert {t["name"] for t in plugins["system"]["tools"]} == {
        "run_command",
        "read_file",
        "list_dir",
        "write_file",
        "fetch_url",
    }
    text = plugin_daemon.cli("plugin", "list")
    assert "broken" in text.stdout
    assert "import boom" in text.stdout


def test_plugin_cli_enable_disable_install_setup_live(
    plugin_daemon: DaemonHandle, forecast_api: ForecastAPI
) -> None:
    home = plugin_daemon.home
    disabled = plugin_daemon.cli("plugin", "disable", "crashy")
    assert disabled.returncode == 0, disabled.stderr
    assert "crashy.poll" not in {t.name for t in _status(plugin_daemon).tasks}
    assert "crashy" in load_config(home / "config.toml").plugins.disabled

    enabled = plugin_daemon.cli("plugin", "enable", "crashy")
    assert enabled.returncode == 0, enabled.stderr
    assert "crashy.poll" in {t.name for t in _status(plugin_daemon).tasks}

    # SIGHUP applies a hand-edited [plugins] disabled without a restart.
    config = home / "config.toml"
    data = tomllib.loads(config.read_text())
    data.setdefault("plugins", {})["disabled"] = ["crashy"]
    config.write_text(tomli_w.dumps(data))
    assert plugin_daemon.process is not None
    plugin_daemon.process.send_signal(signal.SIGHUP)
    _wait(lambda: "crashy.poll" not in {t.name for t in _status(plugin_daemon).tasks})
    listing = json.loads(plugin_daemon.cli("plugin", "list", "--json").stdout)
    assert {p["name"]: p for p in listing}["crashy"]["state"] == "disabled"
    assert plugin_daemon.cli("plugin", "enable", "crashy").returncode == 0

    missing = plugin_daemon.cli("plugin", "enable", "nope")
    assert missing.returncode == 9
    assert "no plugin named 'nope'" in missing.stderr

    broken = plugin_daemon.cli("plugin", "enable", "broken")
    assert broken.returncode == 1
    assert "import boom" in broken.stderr

    # The example is configured in the fixture; install it from the docs folder.
    installed = plugin_daemon.cli("plugin", "install", str(EXAMPLE))
    assert installed.returncode == 0, installed.stderr
    assert "weather" in installed.stdout
    info = plugin_daemon.cli("plugin", "info", "weather", "--json")
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["plugin"]["state"] == "active"
    assert data["config"]["base_url"] == forecast_api.url

    setup = plugin_daemon.cli("plugin", "setup", "weather")
    assert setup.returncode == 0, setup.stderr
    assert "pyra vault set plugin:weather:api_key" in setup.stdout

    with plugin_daemon.connect() as conn:
        result = conn.call("plugins.list", Empty(), PluginListResult)
    assert {p.name for p in result.plugins} >= {"system", "crashy", "broken", "weather"}
    assert msgspec.json.encode(result)  # round-trips over the wire


def test_plugin_cli_without_daemon_fails_clearly(pyra_home: Path) -> None:
    from tests.conftest import clean_env

    handle = DaemonHandle(home=pyra_home, env=clean_env(pyra_home))
    result = handle.cli("plugin", "list", "--no-autostart")
    assert result.returncode == 3
    assert "no Pyra daemon" in result.stderr
    assert not os.path.exists(pyra_home / "pyra.pid")


def test_docs_show_the_example_plugin_exactly_as_tested() -> None:
    doc = (EXAMPLE.parent.parent / "plugins.md").read_text()
    assert (EXAMPLE / "plugin.py").read_text() in doc
    assert (EXAMPLE / "manifest.json").read_text() in doc

"""The daemon process: wires state, engine and server together and runs until told to stop.

Start-up order is chosen for a fast ready: prepare the home, take the PID lock, open the
database, bind the socket, announce the endpoint and tell systemd we are ready; only then import
litellm, in a worker thread. SIGTERM/SIGINT (or the ``shutdown`` method) stop accepting, give
running turns ``daemon.shutdown_grace`` seconds, cancel the rest (each is recorded as
cancelled) and close the database. SIGHUP reloads the config file.

RPC methods live here as thin adapters from protocol structs to the stores and the engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from pyra_client import __version__
from pyra_client.errors import ShuttingDown
from pyra_client.paths import Endpoint, Layout, default_socket_path, ensure_private_dir
from pyra_client.protocol import (
    PROTOCOL_VERSION,
    AskParams,
    AskResult,
    ConversationExportParams,
    ConversationExportResult,
    ConversationIdParams,
    ConversationListParams,
    ConversationListResult,
    ConversationShowResult,
    DoctorParams,
    Empty,
    OkResult,
    StatusResult,
    TaskStatus,
)
from pyra_daemon import hardening, notify
from pyra_daemon.audit import AuditStore
from pyra_daemon.broker import InteractionBroker
from pyra_daemon.config import Config, load_config, save_config
from pyra_daemon.config_service import ConfigService
from pyra_daemon.conversations import ConversationStore
from pyra_daemon.db import Database
from pyra_daemon.diagnostics import Diagnostics
from pyra_daemon.engine import Engine
from pyra_daemon.gatekeeper import GateService
from pyra_daemon.home import prepare_home
from pyra_daemon.interactions import Interactions, eligible_for
from pyra_daemon.llm import LiteLLMClient
from pyra_daemon.logs import setup_logging
from pyra_daemon.memory_service import MemoryService
from pyra_daemon.memory_tools import memory_tools
from pyra_daemon.pidfile import PidFile
from pyra_daemon.plugins import PluginManager
from pyra_daemon.server import Call, Handler, Method, MethodTable, Server
from pyra_daemon.setup_service import SetupService
from pyra_daemon.supervisor import Supervisor
from pyra_daemon.tools import ToolRegistry
from pyra_daemon.vault_service import VaultService

__all__ = ["Daemon", "rss_bytes"]

log = logging.getLogger(__name__)


def rss_bytes() -> int:
    """The process's resident set size now (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


class Daemon:
    def __init__(self, layout: Layout, config: Config) -> None:
        self.layout = layout
        self.config = config
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self._stop = anyio.Event()
        self.stopping = False
        self.endpoint: Endpoint | None = None
        self.db: Database | None = None
        self.conversations: ConversationStore | None = None
        self.vault = VaultService(layout.vault_dir)
        self.llm = LiteLLMClient(lambda: self.config.llm, self.vault.provider_key)
        self.settings = ConfigService(self)
        self.setup = SetupService(self, self.settings, self.llm, self.vault.provider_key)
        self.memory = MemoryService(layout)
        self.supervisor: Supervisor | None = None
        #: Set once built-in tools and plugins are loaded (after READY); turns wait for it.
        self._extensions_loaded = anyio.Event()
        # Tools and approvals: the registry audits into the database once it is open. A lambda,
        # because the registry needs the broker first.
        self.broker = InteractionBroker(
            audit=lambda record: self.tools.record_interaction(record)  # noqa: PLW0108
        )
        self.tools = ToolRegistry(
            self.broker, config=lambda: self.config.tools, eligible_for=eligible_for
        )
        self.interactions = Interactions(self.broker, self.tools)
        self.audit: AuditStore | None = None
        self.plugins = PluginManager(
            layout,
            config=lambda: self.config,
            tools=self.tools,
            save_config=self._save_config,
            vault=lambda: self.vault.vault,
        )
        self.gate = GateService(self, secrets_store=self.vault.vault, taint=self.tools.taint)
        self.engine: Engine | None = None
        self.server = Server(
            self._methods(), version=__version__, on_session_end=self.interactions.session_ended
        )

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until stopped; returns the process exit status."""
        pidfile = PidFile(self.layout.pid_file)
        pidfile.acquire()
        try:
            async with self._state(), anyio.create_task_group() as tasks:
                listener = await self._listen()
                if self.audit is not None:
                    # The approval audit's writer, drained (before the DB closes) on the way out.
                    await tasks.start(self.audit.run)
                await tasks.start(self.server.serve, listener)
                # Handlers before READY=1: a reload or stop right after it must not kill us.
                await tasks.start(self._signals)
                self._announce()
                await tasks.start(self._extensions)
                tasks.start_soon(self._watchdog)
                tasks.start_soon(self.memory.maintain)
                if self.config.daemon.warm_up:
                    tasks.start_soon(self._warm_up)
                await self._stop.wait()
                notify.stopping()
                log.info("stopping: no new connections; %d turn(s) running", self._active())
                await listener.aclose()
                denied = self.broker.deny_pending("the daemon is shutting down")
                if denied:
                    log.info("denied %d pending approval request(s)", denied)
                if self.engine is not None:
                    with anyio.move_on_after(self.config.daemon.shutdown_grace):
                        await self.engine.wait_idle()
                tasks.cancel_scope.cancel()
        finally:
            self._withdraw()
            pidfile.release()
        log.info("stopped")
        return 0

    def stop(self) -> None:
        self.stopping = True
        self._stop.set()

    def _active(self) -> int:
        return self.engine.active_turns if self.engine else 0

    @contextlib.asynccontextmanager
    async def _state(self) -> AsyncIterator[None]:
        await self.vault.open()
        self.db = await Database.open(self.layout.db_file)
        try:
            self.conversations = ConversationStore(self.db)
            interrupted = await self.conversations.recover()
            if interrupted:
                log.warning("%d turn(s) were interrupted by the last shutdown", interrupted)
            self.memory.open(self.db)
            self.audit = AuditStore(self.db)
            self.tools.attach(self.audit)
            await self.gate.open(self.db)
            self.engine = Engine(
                self.conversations,
                self.llm,
                lambda: self.config.llm,
                toolbox=self.tools,
                context=self._prompt_context,
                ready=self._extensions_loaded.wait,
            )
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await self.db.aclose()

    async def _extensions(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Load the built-in tools and the plugins, then supervise them until cancelled.

        Runs after READY so `status` answers in a fraction of the time plugin discovery, tool
        schema compilation and plugin imports take; turns wait for ``_extensions_loaded``.
        """
        testing = self.config.daemon.supervisor_testing or os.environ.get(
            "PYRA_SUPERVISOR_TESTING", ""
        ) not in ("", "0")
        task_status.started()
        async with Supervisor(testing=testing) as supervisor:
            self.supervisor = supervisor
            try:
                for memory_tool in memory_tools(self.memory.store):
                    # Built in, not a plugin: listed under "memory" so it is never unloaded.
                    self.tools.add(dataclasses.replace(memory_tool, plugin="memory"))
                await self.plugins.start(supervisor)
                self._extensions_loaded.set()
                await anyio.sleep_forever()
            finally:
                self._extensions_loaded.set()
                with anyio.CancelScope(shield=True):
                    await self.plugins.aclose()

    def _save_config(self, config: Config) -> None:
        save_config(config, self.layout.config_file)
        self.settings.apply(config)

    async def _prompt_context(self, prompt: str) -> str:
        """System-prompt additions for a turn: the plugins' text, then saved memory."""
        parts = [self.plugins.system_prompt(), await self.memory.context(prompt)]
        return "\n\n".join(part for part in parts if part)

    async def _listen(self) -> anyio.abc.Listener[Any]:
        daemon = self.config.daemon
        if daemon.transport == "tcp":
            token = secrets.token_urlsafe(32)
            token_file = self.layout.token_file
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(token + "\n")
            self.server = Server(
                self._methods(),
                version=__version__,
                token=token,
                on_session_end=self.interactions.session_ended,
            )
            multi = await anyio.create_tcp_listener(
                local_host="127.0.0.1", local_port=daemon.tcp_port
            )
            tcp = multi.listeners[0]  # one address, so one listener
            assert isinstance(tcp, anyio.abc.SocketListener)
            port = tcp.extra(anyio.abc.SocketAttribute.local_port)
            self.endpoint = Endpoint(
                transport="tcp", host="127.0.0.1", port=port, token_file=str(token_file)
            )
            return tcp
        path = default_socket_path(self.layout, daemon.socket)
        ensure_private_dir(path.parent)
        # We hold the PID lock, so a socket file left here is a dead daemon's.
        path.unlink(missing_ok=True)
        unix = await anyio.create_unix_listener(path, mode=0o600)
        self.endpoint = Endpoint(transport="unix", path=str(path))
        return unix

    def _announce(self) -> None:
        assert self.endpoint is not None
        tmp = self.layout.endpoint_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(self.endpoint.to_json())
        tmp.replace(self.layout.endpoint_file)
        notify.ready()
        log.info(
            "ready on %s in %.0f ms (pid %d)",
            self.endpoint.describe(),
            (time.monotonic() - self._started_mono) * 1000,
            os.getpid(),
        )

    def _withdraw(self) -> None:
        self.layout.endpoint_file.unlink(missing_ok=True)
        if self.endpoint is not None and self.endpoint.transport == "unix":
            Path(self.endpoint.path).unlink(missing_ok=True)
        self.layout.token_file.unlink(missing_ok=True)

    async def _signals(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.reload()
                    await self.plugins.reload()
                else:
                    log.info("received %s", signal.Signals(signum).name)
                    self.stop()

    async def _watchdog(self) -> None:
        """Tell systemd we are alive at half its watchdog interval (when it set one)."""
        interval = notify.watchdog_interval()
        if not interval:
            return
        while True:
            notify.watchdog()
            await anyio.sleep(interval / 2)

    async def _warm_up(self) -> None:
        try:
            await self.llm.warm_up()
        except Exception:
            log.exception("warming up litellm failed; the first answer will try again")

    def reload(self) -> None:
        notify.reloading()
        try:
            self.config = load_config(self.layout.config_file)
        except Exception as exc:  # noqa: BLE001 - a bad edit must not take the daemon down
            log.error("config not reloaded, keeping the previous one: %s", exc)  # noqa: TRY400
        else:
            logging.getLogger().setLevel(self.config.daemon.log_level)
            log.info("config reloaded")
        notify.ready()

    # --- methods ---------------------------------------------------------------------------

    def _methods(self) -> MethodTable:
        return {
            "status": Method(Empty, self.m_status, inline=True),
            "shutdown": Method(Empty, self.m_shutdown, inline=True),
            "ask": Method(AskParams, self.m_ask),
            "conversations.list": Method(ConversationListParams, self.m_conversations_list),
            "conversations.show": Method(ConversationIdParams, self.m_conversations_show),
            "conversations.delete": Method(ConversationIdParams, self.m_conversations_delete),
            "conversations.export": Method(ConversationExportParams, self.m_conversations_export),
            # --- vault and config methods ---
            **self.vault.methods(),
            **self.settings.methods(),
            **self.setup.methods(),
            # --- tools, approvals and plugins methods ---
            **self.interactions.methods(),
            **self._after_extensions(
                {"tools.list": self.interactions.methods()["tools.list"], **self.plugins.methods()}
            ),
            # --- memory methods ---
            **self.memory.methods(),
            # --- doctor methods ---
            "doctor": Method(
                DoctorParams,
                Diagnostics(
                    self.layout, lambda: self.config, self.llm, vault=lambda: self.vault.vault
                ).m_doctor,
            ),
            # --- gatekeeper methods ---
            **self.gate.methods(),
        }

    def _after_extensions(self, table: MethodTable) -> MethodTable:
        """*table* with each handler waiting until tools and plugins are loaded (after READY)."""

        def waiting(handler: Handler) -> Handler:
            @functools.wraps(handler)  # keeps the result type the protocol schema reads
            async def wait_then_handle(call: Call, params: Any) -> Any:
                await self._extensions_loaded.wait()
                return await handler(call, params)

            return wait_then_handle

        return {
            name: dataclasses.replace(method, handler=waiting(method.handler), inline=False)
            for name, method in table.items()
        }

    def _store(self) -> ConversationStore:
        if self.conversations is None:
            raise ShuttingDown("the daemon is not serving")
        return self.conversations

    async def m_status(self, call: Call, params: Empty) -> StatusResult:
        llm = self.config.llm
        return StatusResult(
            pid=os.getpid(),
            version=__version__,
            protocol=PROTOCOL_VERSION,
            uptime=time.monotonic() - self._started_mono,
            home=str(self.layout.home),
            endpoint=self.endpoint.describe() if self.endpoint else "",
            provider=llm.provider,
            model=llm.model,
            conversations=await self._store().count(),
            rss_bytes=rss_bytes(),
            llm_ready=self.llm.ready,
            active_turns=self._active(),
            tasks=[
                TaskStatus(
                    name=task.name,
                    state=str(task.state),
                    restarts=task.restarts,
                    last_error=task.last_error,
                )
                for task in (self.supervisor.status() if self.supervisor else [])
            ],
        )

    async def m_shutdown(self, call: Call, params: Empty) -> OkResult:
        log.info("shutdown requested by %s", call.session.id)
        self.stop()
        return OkResult()

    async def m_ask(self, call: Call, params: AskParams) -> AskResult:
        if self.stopping or self.engine is None:
            raise ShuttingDown("the daemon is shutting down")
        emit = call.emit if params.stream else _discard
        # An interactive asker answers the approval requests of its own turn (see interactions).
        approving = (
            self.interactions.asking(call.session) if params.approve else contextlib.nullcontext()
        )
        async with approving:
            return await self.engine.ask(
                params,
                kind=call.session.client or "cli",
                request=call.request_id,
                origin=call.session.id,
                emit=emit,
            )

    async def m_conversations_list(
        self, call: Call, params: ConversationListParams
    ) -> ConversationListResult:
        return ConversationListResult(
            conversations=await self._store().list(limit=params.limit, kind=params.kind)
        )

    async def m_conversations_show(
        self, call: Call, params: ConversationIdParams
    ) -> ConversationShowResult:
        return await self._store().show(params.id)

    async def m_conversations_delete(self, call: Call, params: ConversationIdParams) -> OkResult:
        await self._store().delete(params.id)
        return OkResult()

    async def m_conversations_export(
        self, call: Call, params: ConversationExportParams
    ) -> ConversationExportResult:
        return ConversationExportResult(
            content=await self._store().export(params.id, params.format)
        )


async def _discard(event: object) -> None:
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the daemon in the foreground (``python -m pyra_daemon``); returns the exit status."""
    from pyra_client.errors import ConfigError, PyraError

    os.umask(0o077)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    hardening.harden_process()
    layout = Layout.default()
    try:
        prepare_home(layout)
        config = load_config(layout.config_file)
    except ConfigError as exc:
        print(f"pyra daemon: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except PyraError as exc:
        print(f"pyra daemon: {exc}", file=sys.stderr)
        return 1
    setup_logging(layout.log_file, config.daemon.log_level)
    try:
        return anyio.run(Daemon(layout, config).run, backend="asyncio")
    except (PyraError, BaseExceptionGroup) as raised:
        # Raised inside the daemon's task group (binding the socket, say), a PyraError
        # arrives wrapped in an exception group: unwrap a lone one, re-raise anything else.
        error: BaseException = raised
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if not isinstance(error, PyraError):
            raise
        log.error("%s", error)  # noqa: TRY400 - a clear line, not a traceback
        return int(error.exit_code)
    except KeyboardInterrupt:
        return 130

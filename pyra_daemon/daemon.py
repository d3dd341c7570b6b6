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
from pyra_client.errors import NotConfigured, ShuttingDown
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
    Empty,
    OkResult,
    SetupParams,
    SetupResult,
    StatusResult,
)
from pyra_client.providers import PROVIDERS, Provider
from pyra_daemon import hardening, notify
from pyra_daemon.config import Config, LLMConfig, load_config, save_config
from pyra_daemon.conversations import ConversationStore
from pyra_daemon.db import Database
from pyra_daemon.engine import Engine
from pyra_daemon.home import prepare_home
from pyra_daemon.llm import LiteLLMClient
from pyra_daemon.logs import redactor, setup_logging
from pyra_daemon.pidfile import PidFile
from pyra_daemon.secret import Secret
from pyra_daemon.server import Call, Method, MethodTable, Server

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
        self.llm = LiteLLMClient(lambda: self.config.llm, self._provider_key)
        self.engine: Engine | None = None
        self.server = Server(self._methods(), version=__version__)

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until stopped; returns the process exit status."""
        pidfile = PidFile(self.layout.pid_file)
        pidfile.acquire()
        try:
            async with self._state(), anyio.create_task_group() as tasks:
                listener = await self._listen()
                await tasks.start(self.server.serve, listener)
                self._announce()
                tasks.start_soon(self._signals)
                tasks.start_soon(self._watchdog)
                if self.config.daemon.warm_up:
                    tasks.start_soon(self._warm_up)
                await self._stop.wait()
                notify.stopping()
                log.info("stopping: no new connections; %d turn(s) running", self._active())
                await listener.aclose()
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
        self.db = await Database.open(self.layout.db_file)
        try:
            self.conversations = ConversationStore(self.db)
            interrupted = await self.conversations.recover()
            if interrupted:
                log.warning("%d turn(s) were interrupted by the last shutdown", interrupted)
            self.engine = Engine(self.conversations, self.llm, lambda: self.config.llm)
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await self.db.aclose()

    async def _listen(self) -> anyio.abc.Listener[Any]:
        daemon = self.config.daemon
        if daemon.transport == "tcp":
            token = secrets.token_urlsafe(32)
            token_file = self.layout.token_file
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(token + "\n")
            self.server = Server(self._methods(), version=__version__, token=token)
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

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.reload()
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

    async def _provider_key(self, provider: Provider, config: LLMConfig) -> Secret | None:
        env = config.api_key_env or provider.api_key_env
        value = os.environ.get(env) if env else None
        if value:
            redactor.add(value)
            return Secret(value)
        if provider.needs_key:
            raise NotConfigured(
                f"no API key for {provider.name}: set ${env} in the daemon's environment "
                f"(or store it with `pyra vault set provider:{provider.id}`)",
                provider=provider.id,
            )
        return None

    # --- methods ---------------------------------------------------------------------------

    def _methods(self) -> MethodTable:
        return {
            "status": Method(Empty, self.m_status, inline=True),
            "shutdown": Method(Empty, self.m_shutdown, inline=True),
            "ask": Method(AskParams, self.m_ask),
            "setup": Method(SetupParams, self.m_setup),
            "conversations.list": Method(ConversationListParams, self.m_conversations_list),
            "conversations.show": Method(ConversationIdParams, self.m_conversations_show),
            "conversations.delete": Method(ConversationIdParams, self.m_conversations_delete),
            "conversations.export": Method(ConversationExportParams, self.m_conversations_export),
            # --- vault and config methods ---
            # --- tools, approvals and plugins methods ---
            # --- memory methods ---
            # --- doctor methods ---
            # --- gatekeeper methods ---
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
        )

    async def m_shutdown(self, call: Call, params: Empty) -> OkResult:
        log.info("shutdown requested by %s", call.session.id)
        self.stop()
        return OkResult()

    async def m_ask(self, call: Call, params: AskParams) -> AskResult:
        if self.stopping or self.engine is None:
            raise ShuttingDown("the daemon is shutting down")
        emit = call.emit if params.stream else _discard
        return await self.engine.ask(
            params,
            kind=call.session.client or "cli",
            request=call.request_id,
            origin=call.session.id,
            emit=emit,
        )

    async def m_setup(self, call: Call, params: SetupParams) -> SetupResult:
        if params.provider not in PROVIDERS:
            raise NotConfigured(f"unknown provider {params.provider!r}")
        llm = self.config.llm.model_copy(
            update={
                "provider": params.provider,
                "model": params.model,
                "base_url": params.base_url,
                "api_key_env": params.api_key_env,
            }
        )
        config = Config.model_validate(
            {"llm": llm.model_dump(), "daemon": self.config.daemon.model_dump()}
        )
        save_config(config, self.layout.config_file)
        self.config = config
        log.info("provider set to %s, model %s", params.provider, params.model)
        return SetupResult(
            provider=params.provider, model=params.model, config_path=str(self.layout.config_file)
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
    except PyraError as exc:
        log.error("%s", exc)  # noqa: TRY400 - a clear line, not a traceback
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return 130

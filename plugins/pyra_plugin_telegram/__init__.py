"""The bundled ``telegram`` plugin: a Telegram bot as a supervised background task.

The bot itself (:mod:`pyra_plugin_telegram.bot`) is an IPC frontend: it connects to the daemon
over the socket like any other client and imports ``pyra_client`` and ``telegram`` only. This
module is the one part that imports the daemon, and only its public plugin API: it reads the
bot token from the vault (``plugin:telegram:token``) and the ``[plugins.telegram]`` settings
through the :class:`~pyra_daemon.plugin_api.PluginContext`, then runs the bot. Who may talk to
the bot is the gatekeeper's business (``[gatekeeper.telegram]``, see ``docs/telegram.md``).

Without a token the task ends at once (``stopped`` in ``pyra status``); ``pyra setup telegram``
stores one and restarts it.
"""

from __future__ import annotations

from pyra_daemon.plugin_api import Plugin, PluginContext

__all__ = ["plugin"]

#: The ``[plugins.telegram]`` settings and their defaults (see ``BotSettings``).
DEFAULTS = {
    "api_base_url": "https://api.telegram.org/bot",
    "poll_timeout": 30.0,
    "edit_interval": 1.0,
    "stale_after": 900.0,
}


async def bot(ctx: PluginContext) -> None:
    """Run the Telegram bot until the daemon stops it (the supervisor restarts a crash)."""
    token = await ctx.read_secret("token")
    if not token:
        ctx.log.info(
            "no bot token (plugin:telegram:token): run `pyra setup telegram`; the bot stays off"
        )
        return
    # Imported here: python-telegram-bot costs nothing until a bot is configured.
    from pyra_plugin_telegram.bot import BotSettings, run_telegram

    await run_telegram(token, BotSettings.from_mapping({**DEFAULTS, **ctx.config()}))


plugin = Plugin(
    name="telegram",
    description=(
        "Chat with Pyra and approve its tools from Telegram. Settings in [plugins.telegram]: "
        "api_base_url (for a self-hosted Bot API server), poll_timeout, edit_interval, "
        "stale_after; who may talk is set in [gatekeeper.telegram] (`pyra setup telegram`)."
    ),
    version="1.0",
    tasks=[bot],
    config_defaults=DEFAULTS,
    secrets={"token": "the bot token from @BotFather (`pyra setup telegram` asks for it)"},
)

"""Weather: the example directory plugin of docs/plugins.md.

Install it with ``pyra plugin install docs/examples/weather_plugin`` and store its key with
``pyra vault set plugin:weather:api_key``. It shows every part of the plugin API:

- a read-only tool (``forecast``) whose JSON Schema comes from its signature and docstring,
  and which receives the plugin's context through a ``PluginContext`` parameter;
- a slash command (``/weather Paris``);
- a system-prompt addition and config defaults (``[plugins.weather]`` overrides them);
- a secret read from the vault under ``plugin:weather:api_key``;
- ``setup`` that validates the config, and a supervised background task that keeps the
  forecast for ``home_city`` warm.

The forecast API it calls is ``GET {base_url}/forecast?city=...&days=...&units=...`` with
``Authorization: Bearer <key>``, answering ``{"city": ..., "days": [{"date", "summary",
"high", "low"}]}``; point ``base_url`` at any service that speaks it.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx

from pyra_daemon.plugin_api import Plugin, PluginContext, SlashCommand, ToolError, tool

DEFAULTS: dict[str, Any] = {
    "base_url": "https://forecast.example.org/v1",
    "units": "metric",
    "timeout": 10.0,
    "home_city": "",
    "refresh_minutes": 30,
}

# Forecasts fetched recently: {(city, days, units): (fetched_at, text)}. Bounded below.
_cache: dict[tuple[str, int, str], tuple[float, str]] = {}
_CACHE_SECONDS = 600
_CACHE_ENTRIES = 64


async def _fetch(ctx: PluginContext, city: str, days: int) -> str:
    settings = ctx.config()
    key = await ctx.read_secret("api_key")
    if not key:
        raise ToolError(
            "the weather plugin has no API key; the person can store one with "
            "`pyra vault set plugin:weather:api_key`"
        )
    cache_key = (city.lower(), days, settings["units"])
    cached = _cache.get(cache_key)
    if cached and time.monotonic() - cached[0] < _CACHE_SECONDS:
        return cached[1]
    try:
        async with httpx.AsyncClient(timeout=float(settings["timeout"])) as client:
            response = await client.get(
                f"{settings['base_url'].rstrip('/')}/forecast",
                params={"city": city, "days": days, "units": settings["units"]},
                headers={"Authorization": f"Bearer {key}"},
            )
    except httpx.HTTPError as exc:
        raise ToolError(f"the forecast service did not answer: {exc}") from exc
    if response.status_code == 404:
        raise ToolError(f"the forecast service does not know {city!r}")
    if response.status_code != 200:
        raise ToolError(f"the forecast service answered HTTP {response.status_code}")
    data = response.json()
    unit = "°C" if settings["units"] == "metric" else "°F"
    lines = [f"Forecast for {data.get('city', city)}:"] + [
        f"- {day['date']}: {day['summary']}, high {day['high']}{unit}, low {day['low']}{unit}"
        for day in data.get("days", [])[:days]
    ]
    text = "\n".join(lines)
    if len(_cache) >= _CACHE_ENTRIES:
        _cache.pop(next(iter(_cache)))
    _cache[cache_key] = (time.monotonic(), text)
    return text


@tool(read_only=True, timeout=20)
async def forecast(ctx: PluginContext, city: str, days: int = 1) -> str:
    """Get the weather forecast for a city.

    Args:
        city: The city, optionally with its country, e.g. "Lyon, FR".
        days: How many days ahead, 1 to 7.
    """
    if not 1 <= days <= 7:
        raise ToolError("days must be between 1 and 7")
    return await _fetch(ctx, city.strip(), days)


async def weather_command(args: str, ctx: PluginContext) -> str:
    city = args.strip() or str(ctx.config()["home_city"])
    if not city:
        return "usage: /weather CITY (or set home_city in [plugins.weather])"
    try:
        return await _fetch(ctx, city, 1)
    except ToolError as exc:
        return str(exc)


async def setup(ctx: PluginContext) -> None:
    settings = ctx.config()
    if not str(settings["base_url"]).startswith(("http://", "https://")):
        raise ValueError("[plugins.weather] base_url must start with http:// or https://")
    if settings["units"] not in ("metric", "imperial"):
        raise ValueError('[plugins.weather] units must be "metric" or "imperial"')


async def keep_home_forecast_warm(ctx: PluginContext) -> None:
    """Refresh the home city's forecast now and then, so /weather answers at once."""
    settings = ctx.config()
    city = str(settings["home_city"])
    if not city:
        return  # nothing to do: the supervisor shows the task as stopped
    while True:
        try:
            await _fetch(ctx, city, 1)
        except ToolError as exc:
            ctx.log.warning("could not refresh the forecast for %s: %s", city, exc)
        await anyio.sleep(float(settings["refresh_minutes"]) * 60)


plugin = Plugin(
    name="weather",
    description="Weather forecasts from a forecast API.",
    version="1.0.0",
    tools=[forecast],
    commands=[
        SlashCommand("weather", "Today's forecast for a city: /weather CITY", weather_command)
    ],
    system_prompt=(
        "When the person asks about the weather, call the forecast tool rather than guessing."
    ),
    config_defaults=DEFAULTS,
    tasks=[keep_home_forecast_warm],
    setup=setup,
    secrets={"api_key": "the forecast service's API key"},
)

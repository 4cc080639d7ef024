"""Just enough of the Chrome DevTools Protocol to load a page in headless Chromium and look at it.

Chromium is started with ``--remote-debugging-port=0``; it writes the port it chose to
``DevToolsActivePort`` in its profile directory. We talk to the page target over aiohttp's
websocket client: no Selenium, no new dependencies. :func:`launch` always kills Chromium and
every process it started, also when the test fails.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import psutil

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
START_DEADLINE = 30.0
CALL_DEADLINE = 30.0


class CdpError(RuntimeError):
    """Chromium answered a command with an error, or went away."""


@dataclass
class Page:
    """A page target: send commands, wait for events, keep what the console said."""

    ws: aiohttp.ClientWebSocketResponse
    events: list[dict[str, Any]] = field(default_factory=list)
    _next_id: int = 0

    async def _receive(self) -> dict[str, Any]:
        message = await self.ws.receive(timeout=CALL_DEADLINE)
        if message.type is not aiohttp.WSMsgType.TEXT:
            raise CdpError(f"DevTools connection ended: {message.type!r}")
        data: dict[str, Any] = message.json()
        return data

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run one command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        call_id = self._next_id
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            data = await self._receive()
            if data.get("id") != call_id:
                self.events.append(data)
            elif "error" in data:
                raise CdpError(f"{method}: {data['error']}")
            else:
                result: dict[str, Any] = data.get("result", {})
                return result

    async def wait_for(self, method: str) -> dict[str, Any]:
        """The first event named ``method`` (already received or the next to arrive)."""
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            data = await self._receive()
            self.events.append(data)
            if data.get("method") == method:
                return data

    async def evaluate(self, expression: str) -> Any:
        """Evaluate ``expression`` in the page and return its value (JSON-able)."""
        reply = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in reply:
            raise CdpError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def screenshot(
        self, path: Path, *, full_page: bool = False, selector: str | None = None
    ) -> Path:
        """Save a PNG of the viewport (or of the whole page, or of one element)."""
        params: dict[str, Any] = {"format": "png"}
        if selector is not None:
            box = await self.evaluate(
                f"(() => {{ const r = document.querySelector({selector!r})"
                ".getBoundingClientRect(); return [r.left + window.scrollX, "
                "r.top + window.scrollY, r.width, r.height]; })()"
            )
            params |= {
                "captureBeyondViewport": True,
                "clip": {"x": box[0], "y": box[1], "width": box[2], "height": box[3], "scale": 1},
            }
        elif full_page:
            size = await self.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
            )
            params |= {
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1},
            }
        reply = await self.send("Page.captureScreenshot", **params)
        await anyio.Path(path).write_bytes(base64.b64decode(reply["data"]))
        return path

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in {"error", "assert"}:
                found.append(" ".join(str(a.get("value", a)) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                found.append(str(details.get("exception", {}).get("description", details)))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(str(params["entry"].get("text")))
        return found

    def requests(self) -> list[str]:
        """URLs of every request the page made (needs ``Network.enable``)."""
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]


async def _devtools_port(profile: Path, proc: asyncio.subprocess.Process, log: Path) -> int:
    # Chromium announces its port only through this file; there is nothing to await but polling.
    marker = anyio.Path(profile / "DevToolsActivePort")
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            tail = (await anyio.Path(log).read_text())[-2000:]
            raise CdpError(f"chromium exited with {proc.returncode}: {tail}")
        lines = (await marker.read_text()).splitlines() if await marker.exists() else []
        if lines and lines[0].isdigit():
            return int(lines[0])
        await asyncio.sleep(0.05)
    tail = (await anyio.Path(log).read_text())[-2000:]
    raise CdpError(f"chromium did not open its DevTools port: {tail}")


async def _stop(proc: asyncio.subprocess.Process) -> list[int]:
    """Kill Chromium's process group and any stray descendant; return the pids it had."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: we started it that way
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    _, alive = psutil.wait_procs(family, timeout=5)
    for child in alive:
        with suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=5)
    return [proc.pid, *(p.pid for p in family)]


@dataclass
class Browser:
    """A running Chromium and, after it exits, the pids it had (to check none survived)."""

    page: Page
    pids: list[int] = field(default_factory=list)


@asynccontextmanager
async def launch(
    chromium: Path, profile: Path, *, width: int = 1280, height: int = 800
) -> AsyncIterator[Browser]:
    """Start headless Chromium with an empty profile and attach to its page.

    The page has ``Runtime``, ``Log``, ``Page`` and ``Network`` events on and a ``width`` x
    ``height`` viewport. Chromium runs in its own session; on exit the whole process group is
    terminated (killed if it lingers) and ``Browser.pids`` lists every process it had.
    """
    await anyio.Path(profile).mkdir(parents=True, exist_ok=True)
    # A port file left by an earlier Chromium on this profile would point at a dead port.
    await anyio.Path(profile / "DevToolsActivePort").unlink(missing_ok=True)
    log = profile / "chromium.log"
    async with await anyio.open_file(log, "wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            str(chromium),
            *FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr.wrapped,
            start_new_session=True,
        )
    browser: Browser | None = None
    try:
        port = await _devtools_port(profile, proc, log)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as reply:
                targets = await reply.json()
            target = next(t for t in targets if t.get("type") == "page")
            async with http.ws_connect(
                target["webSocketDebuggerUrl"], max_msg_size=0, autoping=False
            ) as ws:
                page = Page(ws)
                for domain in ("Runtime", "Log", "Page", "Network"):
                    await page.send(f"{domain}.enable")
                await page.send(
                    "Emulation.setDeviceMetricsOverride",
                    width=width,
                    height=height,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                browser = Browser(page)
                yield browser
    finally:
        pids = await _stop(proc)
        if browser is not None:
            browser.pids = pids


async def load(page: Page, url: str) -> None:
    """Navigate to ``url`` and wait for its load event."""
    reply = await page.send("Page.navigate", url=url)
    if reply.get("errorText"):
        raise CdpError(f"navigating to {url}: {reply['errorText']}")
    await page.wait_for("Page.loadEventFired")

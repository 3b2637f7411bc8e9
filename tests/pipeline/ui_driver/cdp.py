"""Headless Chromium driven over the DevTools protocol: open a page, wait for what it renders, take a screenshot."""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from websockets.sync.client import ClientConnection, connect

CHROMIUM = Path("/usr/bin/chromium")

# No sandbox because CI runs as root; the rest keeps an offline, headless browser from reaching out or stalling.
_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1600,1000",
]


class BrowserError(RuntimeError):
    """The browser did not start, a DevTools command failed, or a page never showed what was waited for."""


class Page:
    """One tab: DevTools commands go out with an id; events in between are not needed and are dropped."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    def command(self, method: str, **params: object) -> dict:
        message_id = next(self._ids)
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self._socket.recv(timeout=60))
            if reply.get("id") != message_id:
                continue
            if "error" in reply:
                raise BrowserError(f"{method}: {reply['error'].get('message')}")
            return reply["result"]

    def goto(self, url: str) -> None:
        result = self.command("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")

    def evaluate(self, expression: str) -> object:
        result = self.command("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"script failed: {result['exceptionDetails'].get('text')} in {expression[:80]!r}")
        return result["result"].get("value")

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, expression: str, what: str, timeout: float = 60.0) -> object:
        """Poll a JavaScript expression until it is truthy: the UI renders after its GraphQL answers arrive."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout:.0f}s waiting for {what}; the page shows:\n{self.text()[:2000]}")
            time.sleep(0.5)

    def wait_for_text(self, *needles: str, timeout: float = 60.0) -> None:
        checks = " && ".join(f"document.body.innerText.includes({json.dumps(needle)})" for needle in needles)
        self.wait_for(f"!!document.body && {checks}", what=f"text {list(needles)}", timeout=timeout)

    def click_text(self, text: str, index: int = 0) -> int:
        """Click the index-th innermost element whose whole text is `text`; returns how many there are."""
        return self.evaluate(
            f"""(() => {{
                const hits = Array.from(document.querySelectorAll('body *'))
                    .filter(e => e.children.length === 0 && e.textContent.trim() === {json.dumps(text)});
                if (hits.length > {index}) hits[{index}].click();
                return hits.length;
            }})()"""
        )

    def screenshot(self, path: Path) -> Path:
        data = self.command("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


@contextmanager
def chromium(profile_dir: Path, executable: Path = CHROMIUM, start_timeout: float = 30.0) -> Iterator[Page]:
    """Start a private headless Chromium and yield one page in it; the browser is stopped on exit."""
    profile_dir.mkdir(parents=True, exist_ok=True)
    port_file = profile_dir / "DevToolsActivePort"
    port_file.unlink(missing_ok=True)  # a stale one from an earlier browser names a closed port
    process = subprocess.Popen(
        [str(executable), *_FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=(profile_dir / "chromium.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + start_timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                log = (profile_dir / "chromium.log").read_text(errors="replace")[-2000:]
                raise BrowserError(f"{executable} did not open its DevTools port:\n{log}")
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page_url = next(target["webSocketDebuggerUrl"] for target in targets if target["type"] == "page")
        with connect(page_url, max_size=None, open_timeout=10) as socket:
            page = Page(socket)
            page.command("Page.enable")
            yield page
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

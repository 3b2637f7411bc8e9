"""The Dagster UI, in a real headless Chromium, shows the materialized graph: assets, lineage and metadata."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from qft_core.config import REPO_ROOT
from qft_pipeline.definitions import defs
from tests.pipeline.loopback import free_port
from tests.pipeline.ui_driver.cdp import CHROMIUM, Page, chromium

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)"),
]

SCREENS = REPO_ROOT / "artifacts" / "test-screens"
TABLE_ASSET = "term_annotated_examples"  # its `categories` metadata is a Markdown table
IMAGE_ASSET = "evaluation_report"  # carries a chart as a Markdown image once the evaluation assets exist


@pytest.fixture(scope="module")
def webserver(whole_graph, tmp_path_factory):
    """dagster-webserver on loopback against the project's workspace.yaml and the private home."""
    port = free_port()
    log = tmp_path_factory.mktemp("webserver") / "webserver.log"
    command = [sys.executable, "-m", "dagster_webserver", "-w", str(REPO_ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**os.environ, "DAGSTER_HOME": str(whole_graph["home"])},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its code server is a child: stop the whole group we started
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/server_info", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dagster-webserver did not come up on {url}:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def page(webserver, tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as page:
        yield page


def _save_screen(page: Page, tmp_path: Path, name: str) -> Path:
    shot = page.screenshot(tmp_path / f"{name}.png")
    SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENS / shot.name)
    assert shot.stat().st_size > 10_000, "a screenshot of a rendered page is not that small"
    return shot


def _section(text: str, start: str, end: str) -> set[str]:
    body = text.split(start, 1)[1].split(end, 1)[0]
    return {line.strip() for line in body.splitlines() if line.strip()}


def _graph():
    return defs.resolve_asset_graph()


def _name(key) -> str:
    return key.to_user_string()


ASSETS = sorted(_name(key) for key in _graph().materializable_asset_keys)


def _neighbours(asset: str) -> tuple[set[str], set[str]]:
    node = next(_graph().get(key) for key in _graph().materializable_asset_keys if _name(key) == asset)
    return {_name(key) for key in node.parent_keys}, {_name(key) for key in node.child_keys}


LOCATION = "qft_pipeline.definitions"  # workspace.yaml's python_module names the code location


def _groups() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for key in _graph().materializable_asset_keys:
        groups.setdefault(_graph().get(key).group_name, []).append(_name(key))
    return {group: sorted(names) for group, names in groups.items()}


def test_asset_group_pages_draw_every_asset_as_materialized(page, webserver, tmp_path):
    page.goto(f"{webserver}/asset-groups")
    # The global lineage shows one collapsed box per asset group.
    page.wait_for_text("Global asset lineage", *_groups(), timeout=120)
    for group, names in _groups().items():
        page.goto(f"{webserver}/locations/{LOCATION}/asset-groups/{group}")
        page.wait_for_text(*names, timeout=120)
        # Node statuses load after the graph itself: wait until none still says "Loading".
        text = page.wait_for(
            "(() => { const text = document.body.innerText;"
            " return text.includes('Loading') ? null : text; })()",
            what=f"the lineage graph of group {group}",
        )
        assert [name for name in names if name not in text] == []
        # Every node says when it was materialized (a partitioned one, how many partitions are filled); an
        # asset that never ran would say "Never materialized".
        assert text.count("Materialized") + text.count("% filled") >= len(names)
        assert "Never materialized" not in text
        _save_screen(page, tmp_path, f"asset-graph-{group}")


def test_asset_page_shows_lineage_and_markdown_table_metadata(page, webserver, tmp_path):
    parents, children = _neighbours(TABLE_ASSET)
    page.goto(f"{webserver}/assets/{TABLE_ASSET}")
    page.wait_for_text("Upstream assets", "Downstream assets", "categories", *parents, *children, timeout=120)
    text = page.text()
    assert _section(text, "Upstream assets", "Downstream assets") & set(ASSETS) == parents
    assert _section(text, "Downstream assets", "Definition") & set(ASSETS) == children
    # The Markdown table arrives as a real <table> (inside the metadata table) with its header and rows.
    table = page.wait_for(
        "(() => { const t = Array.from(document.querySelectorAll('td table'))"
        ".find(t => t.querySelector('th') && t.querySelector('th').textContent.trim() === 'category');"
        " if (!t) return null; t.scrollIntoView({block: 'center'});"
        " return Array.from(t.querySelectorAll('tr')).map(r => Array.from(r.cells).map(c => c.textContent.trim())); })()",
        what="the categories metadata rendered as a table",
    )
    assert table[0] == ["category", "examples"]
    assert ["fundamentals", "40"] in table[1:]
    _save_screen(page, tmp_path, f"asset-{TABLE_ASSET}")


_CHART = (
    "Array.from(document.querySelectorAll('img')).filter(i => i.src.startsWith('data:image/png')"
    " && i.complete && i.naturalWidth > 0).map(i => i.alt)[0] || null"
)


@pytest.mark.skipif(IMAGE_ASSET not in ASSETS, reason=f"no {IMAGE_ASSET} asset in the graph yet")
def test_evaluation_report_page_shows_its_chart(page, webserver, tmp_path):
    page.goto(f"{webserver}/assets/{IMAGE_ASSET}")
    page.wait_for_text("Metadata", "Upstream assets", timeout=120)
    # Long Markdown values sit behind a "[Show Markdown]" link that opens them in a dialog: open each in turn.
    entries = page.text().count("[Show Markdown]")
    chart = page.evaluate(_CHART)
    for index in range(entries):
        if chart:
            break
        page.click_text("[Show Markdown]", index)
        time.sleep(1)
        chart = page.evaluate(_CHART)
        if not chart:
            page.click_text("Close")
    assert chart, f"no image among the {entries} Markdown metadata entries of {IMAGE_ASSET}"
    _save_screen(page, tmp_path, f"asset-{IMAGE_ASSET}")

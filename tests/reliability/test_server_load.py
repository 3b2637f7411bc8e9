"""The OpenAI-compatible server under load: 50 clients for 60 s (bench/load_server.py) against `qft serve` of a
qwen3-tiny package in its own process on a loopback port. Every request is accounted for; none gets a 5xx or a
transport error; every bad request gets its 4xx and every good reply the promised shape; /health answers
throughout and no generation is left behind. The figures are printed and saved, not asserted
(docs/reliability.md, "Load")."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench.load_server import Target, build_tiny_package, run_load, serving

CLIENTS = 50
SECONDS = 60
API_KEY = "load-test-key"


@pytest.mark.slow
def test_fifty_clients_for_a_minute_get_no_server_error_and_well_formed_replies(tmp_path: Path) -> None:
    package = build_tiny_package(tmp_path)
    server_log = tmp_path / "server.log"
    with serving(package, server_log, api_key=API_KEY) as url:
        report = asyncio.run(run_load(Target(url, API_KEY), clients=CLIENTS, seconds=SECONDS))
    text = json.dumps(report, indent=2, ensure_ascii=False)
    (tmp_path / "load_report.json").write_text(text + "\n", encoding="utf-8")
    print(text)

    requests, good, bad = report["requests"], report["good_requests"], report["bad_requests"]
    assert requests["sent"] == sum(kind["sent"] for kind in report["by_kind"].values()) > CLIENTS
    assert requests["sent"] == requests["2xx"] + requests["4xx"] + requests["5xx"] + requests["transport_errors"]
    assert (requests["5xx"], requests["transport_errors"], requests["other"]) == (0, 0, 0), report["transport_errors"]
    assert (requests["2xx"], requests["4xx"]) == (good["sent"], bad["sent"])
    assert bad["unexpected"] == 0 and good["malformed"] == 0, report["problems"]
    assert bad["kinds"] == bad["kinds_defined"]
    assert good["ok"] == good["sent"]
    assert report["health"]["status_histogram"] == {"200": report["health"]["probes"]}
    assert report["waiting_after_load"] == 0
    assert "Traceback" not in server_log.read_text(encoding="utf-8")

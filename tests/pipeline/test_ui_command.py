"""`qft ui` started the way a user backgrounds it (SIGINT ignored, as a shell does for `qft ui &`) stops cleanly,
webserver and daemon included, on SIGTERM and on SIGINT."""

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.pipeline.loopback import free_port

pytestmark = pytest.mark.slow

# dagster dev loads the definitions in a code server before it answers: about 75 s on a busy 2-core machine.
STARTUP_S = 400
STOP_S = 60


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_qft_ui_in_the_background_stops_with_all_its_processes(stop, tmp_path):
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home")}
    process = subprocess.Popen(
        [sys.executable, "-m", "qft_core.cli", "ui", "--port", str(port)],
        env=env, start_new_session=True, preexec_fn=_ignore_sigint,
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "ui.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            assert process.poll() is None, (tmp_path / "ui.log").read_text(errors="replace")[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"qft ui did not answer within {STARTUP_S} s"
            time.sleep(2)

        process.send_signal(stop)

        assert process.wait(timeout=STOP_S) == 0 or process.returncode in (-stop, 128 + stop)
        # The webserver and daemon were in the same new session: none is left behind.
        deadline = time.monotonic() + STOP_S
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(1)
        else:
            pytest.fail("processes of qft ui were still running after it exited")
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

"""Graceful shutdown: SIGTERM lets an in-flight request finish with 200, then uvicorn exits cleanly.

A real server in a subprocess (2 workers) on the session's MLflow store; the in-flight request
streams its body slowly so it is still being received when SIGTERM arrives.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from features.pit import open_leads
from serving.records import export_items

KEY = "shutdown-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM")
def test_sigterm_drains_the_in_flight_request(mlflow_store, sample_export, tmp_path):
    as_of = sample_export.exported_at
    leads = open_leads(sample_export.leads, as_of).head(3)
    body = json.dumps({"as_of": as_of.isoformat(),
                       "leads": export_items(leads, sample_export.accounts, sample_export.activities, as_of)}).encode()
    port = _free_port()
    env = {**os.environ, "FUNNELCAST_TRACKING_URI": mlflow_store["uri"], "FUNNELCAST_API_KEYS": json.dumps([KEY]),
           "FUNNELCAST_HOME": str(tmp_path)}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "2", "--timeout-graceful-shutdown", "60", "--log-level", "info"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, "server died while starting"
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.3)

        sent_half = threading.Event()

        def slow_body():
            half = len(body) // 2
            yield body[:half]
            sent_half.set()
            time.sleep(2.0)  # SIGTERM lands here, with the request half received
            yield body[half:]

        result: dict = {}

        def call() -> None:
            try:
                r = httpx.post(f"{base}/v1/leads/score", content=slow_body(), timeout=60,
                               headers={"X-API-Key": KEY, "Content-Type": "application/json",
                                        "Content-Length": str(len(body))})
                result["status"], result["json"] = r.status_code, r.json()
            except Exception as exc:  # reported by the assertion below
                result["error"] = repr(exc)

        t = threading.Thread(target=call)
        t.start()
        assert sent_half.wait(30)
        time.sleep(0.3)
        server.send_signal(signal.SIGTERM)
        t.join(60)
        rc = server.wait(timeout=60)
        out = server.stdout.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert result.get("status") == 200, (result, out[-2000:])
    assert len(result["json"]["scores"]) == len(leads)
    assert rc == 0, out[-2000:]
    assert "Finished server process" in out
    with pytest.raises(httpx.TransportError):  # and it is really gone
        httpx.get(f"{base}/healthz", timeout=2)

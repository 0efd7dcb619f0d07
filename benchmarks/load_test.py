"""Load on loopback: funnelcast (with reasons) and `mlflow models serve` (same model, no
reasons) side by side, then a soak that watches the servers' memory.

Both servers run on 127.0.0.1 with the same number of uvicorn workers; a bounded number of
client threads send requests for a bounded time. Reported per case: sustained requests per
second, p50/p95/p99 latency and errors; for the soak, resident memory of the server
processes at the start and end.

    python benchmarks/load_test.py [--seconds 20] [--soak 600] [--threads 4] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from features.io import load_export
from features.pit import open_leads
from features.sample import generate_sample
from models.registry import configure
from serving.records import export_items
from training.pipeline import log_and_register
from training.train import TrainConfig, build_lead_model

KEY = "load-key"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not come up")


def _rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn workers), in MB."""
    total = 0.0
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(p) for p in out]
    except FileNotFoundError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def _load(url: str, body: bytes, headers: dict, seconds: float, threads: int) -> dict:
    """Closed-loop load: ``threads`` clients, each sending as fast as answered, for ``seconds``."""
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker() -> None:
        with httpx.Client(timeout=30) as c:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    ok = c.post(url, content=body, headers=headers).status_code == 200
                except httpx.HTTPError:
                    ok = False
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    if not ok:
                        errors[0] += 1

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - start
    ms = np.array(lat) * 1000
    return {
        "requests": len(lat),
        "rps": len(lat) / elapsed,
        "p50_ms": np.percentile(ms, 50),
        "p95_ms": np.percentile(ms, 95),
        "p99_ms": np.percentile(ms, 99),
        "errors": errors[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", default=".funnelcast/sample")
    ap.add_argument("--seconds", type=float, default=20, help="duration of each load case")
    ap.add_argument("--soak", type=float, default=600, help="soak duration (one-lead requests), 0 to skip")
    ap.add_argument("--threads", type=int, default=4, help="client threads")
    ap.add_argument("--workers", type=int, default=2, help="uvicorn workers per server")
    args = ap.parse_args()
    sample = Path(args.sample)
    if not (sample / "export" / "leads.csv").exists():
        generate_sample(sample, progress=True)
    export, _ = load_export(sample / "export")
    as_of = export.exported_at
    cfg = TrainConfig()
    result = build_lead_model(export, cfg, as_of)
    leads = open_leads(export.leads, as_of)
    one, hundred = leads.iloc[[0]], leads.iloc[:100]
    X_one = result.scorer.features(one, export.accounts, export.activities, as_of)

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        log_and_register(result, configure(uri), experiment="load", artifact_location=Path(tmp, "a").as_uri(),
                         cfg=cfg, data_source=str(sample))
        env = {**os.environ, "FUNNELCAST_TRACKING_URI": uri, "MLFLOW_TRACKING_URI": uri,
               "FUNNELCAST_API_KEYS": json.dumps([KEY]), "FUNNELCAST_RATE_LIMIT_PER_MINUTE": "0",
               # mlflow serve execs `uvicorn` by name: it must be on PATH
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        fc_port, ml_port = _port(), _port()
        servers = {
            "funnelcast": subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory", "--host", "127.0.0.1",
                 "--port", str(fc_port), "--workers", str(args.workers), "--log-level", "warning"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            "mlflow": subprocess.Popen(
                [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/lead_quality@champion",
                 "--env-manager", "local", "--host", "127.0.0.1", "-p", str(ml_port), "-w", str(args.workers)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        }
        try:
            _wait(f"http://127.0.0.1:{fc_port}/readyz")
            _wait(f"http://127.0.0.1:{ml_port}/ping")
            fc_url = f"http://127.0.0.1:{fc_port}/v1/leads/score"
            ml_url = f"http://127.0.0.1:{ml_port}/invocations"
            fc_headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
            body_one = json.dumps({"as_of": as_of.isoformat(), "leads": export_items(one, export.accounts, export.activities, as_of)}).encode()
            body_100 = json.dumps({"as_of": as_of.isoformat(), "leads": export_items(hundred, export.accounts, export.activities, as_of)}).encode()
            ml_body = json.dumps({"dataframe_split": json.loads(X_one.to_json(orient="split", index=False))}).encode()
            # sanity: both answer, and agree on the probability
            p_fc = httpx.post(fc_url, content=body_one, headers=fc_headers, timeout=30).json()["scores"][0]["probability"]
            p_ml = httpx.post(ml_url, content=ml_body, headers={"Content-Type": "application/json"}, timeout=30).json()
            p_ml = p_ml["predictions"][0]["probability"]
            rows = []
            for name, url, body, headers in [
                ("funnelcast, 1 lead + reasons", fc_url, body_one, fc_headers),
                ("mlflow serve, 1 lead, no reasons", ml_url, ml_body, {"Content-Type": "application/json"}),
                ("funnelcast, 100 leads + reasons", fc_url, body_100, fc_headers),
            ]:
                rows.append({"case": name, **_load(url, body, headers, args.seconds, args.threads)})
            print(f"\nloopback, {args.workers} uvicorn workers per server, {args.threads} client threads, "
                  f"{args.seconds:.0f} s per case (probability funnelcast {p_fc:.6f} vs mlflow {p_ml:.6f})")
            print(pd.DataFrame(rows).round(1).to_string(index=False))
            if args.soak > 0:
                pid = servers["funnelcast"].pid
                before = _rss_mb(pid)
                samples = []
                window = min(60.0, args.soak)
                t_end = time.perf_counter() + args.soak
                total = 0
                while time.perf_counter() < t_end:
                    r = _load(fc_url, body_one, fc_headers, min(window, t_end - time.perf_counter()), args.threads)
                    total += r["requests"]
                    samples.append((r["requests"], r["errors"], _rss_mb(pid)))
                after = _rss_mb(pid)
                errors = sum(s[1] for s in samples)
                rss = [s[2] for s in samples]
                print(f"\nsoak {args.soak:.0f} s, {total:,} one-lead requests, {errors} errors: funnelcast RSS "
                      f"{before:.0f} MB at start, {min(rss):.0f}..{max(rss):.0f} MB during, {after:.0f} MB at end")
        finally:
            for p in servers.values():
                p.terminate()
            for p in servers.values():
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()

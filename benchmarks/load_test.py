"""Load on loopback: funnelcast (with reasons) and `mlflow models serve` (same model, no
reasons) side by side, then a soak that watches the servers' memory.

Both servers run on 127.0.0.1 with the same number of uvicorn workers (uvicorn[standard]:
uvloop and httptools, as `funnelcast serve` runs); a bounded number of client threads send
requests for a bounded time. Reported per case: sustained requests per second, p50/p95/p99
latency and errors; for the soak, resident memory of the server processes at the start and end.

The last case runs one-lead load while the champion changes under it: every ``--change-every``
seconds the ``@champion`` alias flips between two registered versions and ``POST
/v1/admin/reload`` is sent (the other workers follow with their alias poll, set to 1 s here);
with ``--during refresh`` also ``POST /v1/admin/refresh`` (the snapshot refresh; reported as not
available when the server answers 404). Any failed request there is a failure of the benchmark.

    python benchmarks/load_test.py [--seconds 20] [--soak 600] [--threads 4] [--workers 2]
                                   [--during reload refresh] [--change-every 2]
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

KEY, ADMIN = "load-key", "load-admin-key"


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


def _uvicorn_extras() -> str:
    """Which of uvicorn's fast loop and HTTP parser are installed (uvicorn picks them when they are)."""
    import importlib.util

    found = [m for m in ("uvloop", "httptools") if importlib.util.find_spec(m)]
    return "+".join(found) if found else "asyncio + h11: uvicorn[standard] not installed"


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


def _changes(base: str, uri: str, versions: list[str], every: float, during: list[str], stop: threading.Event,
             done: dict) -> None:
    """Until ``stop``: flip ``@champion`` between ``versions`` and reload; refresh too if asked and available."""
    client = configure(uri)
    headers = {"X-API-Key": ADMIN}
    i = 0
    with httpx.Client(timeout=60) as c:
        while not stop.wait(every):
            i += 1
            if "reload" in during:
                client.set_registered_model_alias("lead_quality", "champion", versions[i % len(versions)])
                r = c.post(f"{base}/v1/admin/reload", headers=headers)
                done["reload"].append(r.status_code)
            if "refresh" in during and done["refresh"] != "not available":
                r = c.post(f"{base}/v1/admin/refresh", headers=headers)
                if r.status_code == 404:
                    done["refresh"] = "not available"  # the server has no snapshot refresh (yet)
                else:
                    done["refresh"].append(r.status_code)


def _under_change(fc_port: int, uri: str, versions: list[str], body: bytes, headers: dict, args: argparse.Namespace) -> tuple[dict, str]:
    """One-lead load while the champion changes (and the snapshot refreshes): the row of the table and a summary."""
    base = f"http://127.0.0.1:{fc_port}"
    done: dict = {"reload": [], "refresh": []}
    stop = threading.Event()
    changer = threading.Thread(target=_changes, args=(base, uri, versions, args.change_every, args.during, stop, done))
    changer.start()
    try:
        row = _load(f"{base}/v1/leads/score", body, headers, args.seconds, args.threads)
    finally:
        stop.set()
        changer.join()
    reloads = done["reload"]
    refresh = done["refresh"]
    note = (f"{len(reloads)} alias changes + reloads ({sum(c == 200 for c in reloads)} answered 200)"
            + ("" if "refresh" not in args.during else
               "; refresh: POST /v1/admin/refresh answered 404 (not available), reload only"
               if refresh == "not available" else
               f"; {len(refresh)} refreshes ({sum(c == 200 for c in refresh)} answered 200)"))
    return {"case": "funnelcast, 1 lead, champion changing", **row}, note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", default=".funnelcast/sample")
    ap.add_argument("--seconds", type=float, default=20, help="duration of each load case")
    ap.add_argument("--soak", type=float, default=600, help="soak duration (one-lead requests), 0 to skip")
    ap.add_argument("--threads", type=int, default=4, help="client threads")
    ap.add_argument("--workers", type=int, default=2, help="uvicorn workers per server")
    ap.add_argument("--during", nargs="*", default=["reload", "refresh"], choices=("reload", "refresh"),
                    help="what changes during the last case (default both; none: skip the case)")
    ap.add_argument("--change-every", type=float, default=2.0, help="seconds between changes in the last case")
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
        versions = [log_and_register(result, configure(uri), experiment="load", artifact_location=Path(tmp, "a").as_uri(),
                                     cfg=cfg, data_source=str(sample)).version for _ in range(2)]  # two to flip between
        env = {**os.environ, "FUNNELCAST_TRACKING_URI": uri, "MLFLOW_TRACKING_URI": uri,
               "FUNNELCAST_HOME": tmp, "FUNNELCAST_ADMIN_API_KEYS": json.dumps([ADMIN]),
               "FUNNELCAST_RELOAD_POLL_SECONDS": "1",
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
            note = None
            if args.during:
                row, note = _under_change(fc_port, uri, versions, body_one, fc_headers, args)
                rows.append(row)
            print(f"\nloopback, {args.workers} uvicorn workers per server ({_uvicorn_extras()}), {args.threads} "
                  f"client threads, {args.seconds:.0f} s per case (probability funnelcast {p_fc:.6f} vs mlflow "
                  f"{p_ml:.6f})")
            print(pd.DataFrame(rows).round(1).to_string(index=False))
            fc, ml = rows[0], rows[1]
            print(f"funnelcast / mlflow, one lead: {fc['rps'] / ml['rps']:.2f}x the requests per second, p99 "
                  f"{fc['p99_ms']:.1f} vs {ml['p99_ms']:.1f} ms")
            if note:
                print(f"champion changing: {note}; {rows[-1]['errors']} failed requests")
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

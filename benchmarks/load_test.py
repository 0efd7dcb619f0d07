"""Load on loopback: funnelcast (with reasons) and `mlflow models serve` (same model, no
reasons) side by side, then a soak that watches the server's memory.

Both servers run on 127.0.0.1 with the same number of uvicorn workers (uvicorn[standard]:
uvloop and httptools, as `funnelcast serve` runs); a bounded number of client threads send
requests for a bounded time. Reported per case: sustained requests per second, p50/p95/p99
latency and failed requests (anything but a 200).

The last case runs one-lead load while the champion changes and the snapshot refreshes under it:
every ``--change-every`` seconds the ``@champion`` alias flips between two registered versions and
``POST /v1/admin/reload`` is sent (the other workers follow with their alias poll, set to 1 s here;
each new champion also starts a background refresh in the worker that loaded it), then ``POST
/v1/admin/refresh`` (the snapshot of the sample's export: every open lead scored). Reported: the
failed requests (must be 0), and the latency of the requests that started while a refresh ran
against the others. The soak runs the same changes (``--soak-quiet``: none) and prints the
server's resident memory, all workers, after each minute.

The side-by-side cases use `wrk` (a C load generator: ``apt-get install wrk``) when it is on the
PATH, so that the generator is not the ceiling: the Python generator (``--generator python``) tops
out near 250 requests per second on 2 cores, below what both servers can serve. With ``--pin``
(the default on a machine with 2 or more cores) every server process runs on core 0 and the load
generator on core 1 (``taskset``), the same for both servers, so they never share a core with
the generator. Each case also reports the server's CPU time per request (all its processes, from
/proc), which other jobs on the machine distort far less than requests per second. The case with
reloads and refreshes and the soak use the Python generator: they need each request's start time
to split latencies by what the server was doing.

    python benchmarks/load_test.py [--sample DIR] [--model-cache FILE] [--seconds 20] [--soak 600]
                                   [--generator wrk|python] [--connections 4] [--threads 4] [--workers 1]
                                   [--pin | --no-pin] [--during reload refresh] [--change-every 2]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
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
    """Resident memory of a server (its process and uvicorn workers), in MB. A refresh's child process
    (it runs at a lower priority than the worker that started it: a higher nice value) is left out:
    it ends with its refresh, and its memory is not the worker's."""
    total = 0.0
    base_nice = _nice(pid)
    for p in _pids(pid):
        if _nice(p) > base_nice:
            continue
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def _nice(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])  # field 19 of proc(5)
    except OSError:
        return 0


def _pids(pid: int) -> list[int]:
    """A process and its children (uvicorn's workers, MLflow's server under its CLI), recursively."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children now alive, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / tick


#: wrk's script: the POST body from a file, the headers, and a JSON line of the summary at the end.
_WRK_LUA = """
wrk.method = "POST"
local f = assert(io.open(os.getenv("LOAD_BODY"), "rb")); wrk.body = f:read("*a"); f:close()
for line in string.gmatch(os.getenv("LOAD_HEADERS"), "[^\\n]+") do
  local k, v = string.match(line, "^([^:]+): (.*)$"); wrk.headers[k] = v
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def _pinned(cmd: list[str], core: int | None) -> list[str]:
    return cmd if core is None else ["taskset", "-c", str(core), *cmd]


def _load_wrk(url: str, body: bytes, headers: dict, seconds: float, connections: int, core: int | None) -> dict:
    """Closed-loop load from wrk (one thread, ``connections`` connections) for ``seconds``: the row of the table."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "body.json").write_bytes(body)
        Path(tmp, "post.lua").write_text(_WRK_LUA)
        env = {**os.environ, "LOAD_BODY": str(Path(tmp, "body.json")),
               "LOAD_HEADERS": "\n".join(f"{k}: {v}" for k, v in headers.items())}
        cmd = _pinned(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "60s",
                       "-s", str(Path(tmp, "post.lua")), url], core)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    line = next((x for x in out.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise SystemExit(f"wrk printed no summary:\n{out}")
    w = json.loads(line.removeprefix("WRK_JSON "))
    failed = {k: w[k] for k in ("connect", "read", "write", "status", "timeout") if w[k]}
    return {"requests": w["requests"], "rps": w["requests"] / (w["duration_us"] / 1e6),
            "p50_ms": w["p50_us"] / 1000, "p95_ms": w["p95_us"] / 1000, "p99_ms": w["p99_us"] / 1000,
            "errors": sum(failed.values()), "_failed": failed, "_calls": []}


def _load(url: str, body: bytes, headers: dict, seconds: float, threads: int) -> dict:
    """Closed-loop load: ``threads`` clients, each sending as fast as answered, for ``seconds``.

    The row of the table, and under ``"_calls"`` each request's (start, seconds, answered 200) for
    splitting the latencies by what the server was doing meanwhile."""
    calls: list[tuple[float, float, bool]] = []
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker() -> None:
        with httpx.Client(timeout=60) as c:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    status = str(c.post(url, content=body, headers=headers).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                dt = time.perf_counter() - t0
                with lock:
                    calls.append((t0, dt, status == "200"))
                    statuses[status] = statuses.get(status, 0) + 1

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - start
    ms = np.array([c[1] for c in calls]) * 1000
    failed = {s: n for s, n in statuses.items() if s != "200"}
    return {
        "requests": len(calls),
        "rps": len(calls) / elapsed,
        "p50_ms": np.percentile(ms, 50),
        "p95_ms": np.percentile(ms, 95),
        "p99_ms": np.percentile(ms, 99),
        "errors": sum(failed.values()),
        "_failed": failed,
        "_calls": calls,
    }


def _changes(base: str, uri: str, versions: list[str], every: float, during: list[str], stop: threading.Event,
             done: dict) -> None:
    """Until ``stop``: flip ``@champion`` between ``versions`` and reload; refresh too if asked and
    available. Each admin call's (start, end, status) goes into ``done``."""
    client = configure(uri)
    headers = {"X-API-Key": ADMIN}
    i = 0
    with httpx.Client(timeout=600) as c:
        while not stop.wait(every):
            i += 1
            if "reload" in during:
                client.set_registered_model_alias("lead_quality", "champion", versions[i % len(versions)])
                t0 = time.perf_counter()
                r = c.post(f"{base}/v1/admin/reload", headers=headers)
                done["reload"].append((t0, time.perf_counter(), r.status_code))
            if "refresh" in during and done["refresh"] != "not available" and not stop.is_set():
                t0 = time.perf_counter()
                r = c.post(f"{base}/v1/admin/refresh", headers=headers)
                if r.status_code == 404:
                    done["refresh"] = "not available"  # the server has no snapshot refresh
                else:
                    done["refresh"].append((t0, time.perf_counter(), r.status_code))


def _split(calls: list[tuple[float, float, bool]], windows: list[tuple[float, float, int]]) -> dict[str, dict]:
    """Latency of the requests that started while one of ``windows`` ran, and of the others."""
    starts = np.array([c[0] for c in calls])
    ms = np.array([c[1] for c in calls]) * 1000
    inside = np.zeros(len(calls), dtype=bool)
    for t0, t1, _ in windows:
        inside |= (starts >= t0) & (starts < t1)
    out = {}
    for name, mask in (("during refresh", inside), ("no refresh running", ~inside)):
        if mask.any():
            out[name] = {"requests": int(mask.sum()), "p50_ms": float(np.percentile(ms[mask], 50)),
                         "p99_ms": float(np.percentile(ms[mask], 99))}
    return out


def _under_change(fc_port: int, uri: str, versions: list[str], body: bytes, headers: dict, args: argparse.Namespace,
                  seconds: float) -> tuple[dict, dict]:
    """One-lead load while the champion changes and the snapshot refreshes: the row and what changed."""
    base = f"http://127.0.0.1:{fc_port}"
    done: dict = {"reload": [], "refresh": []}
    stop = threading.Event()
    # reloads and refreshes in two threads: a refresh takes many seconds, reloads keep coming meanwhile
    changers = [threading.Thread(target=_changes, args=(base, uri, versions, args.change_every, [what], stop, done))
                for what in args.during]
    for t in changers:
        t.start()
    try:
        row = _load(f"{base}/v1/leads/score", body, headers, seconds, args.threads)
    finally:
        stop.set()
        for t in changers:
            t.join()
    return row, done


def _change_note(row: dict, done: dict, during: list[str]) -> str:
    reloads, refresh = done["reload"], done["refresh"]
    parts = [f"{len(reloads)} alias changes + reloads ({sum(c[2] == 200 for c in reloads)} answered 200)"]
    if "refresh" in during:
        if refresh == "not available":
            parts.append("POST /v1/admin/refresh answered 404 (not available)")
        else:
            took = [t1 - t0 for t0, t1, _ in refresh]
            parts.append(f"{len(refresh)} refreshes ({sum(c[2] == 200 for c in refresh)} answered 200, "
                         f"{np.median(took) if took else 0:.1f} s each)")
            for name, s in _split(row["_calls"], refresh).items():
                parts.append(f"{name}: {s['requests']} requests, p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms")
    parts.append(f"{row['errors']} failed requests" + (f" {row['_failed']}" if row["_failed"] else ""))
    return "; ".join(parts)


def _soak(fc_url: str, pid: int, body: bytes, headers: dict, args: argparse.Namespace, change) -> str:
    """One-lead load for ``args.soak`` seconds in windows of a minute (the champion changing and the
    snapshot refreshing throughout unless ``--soak-quiet``), the server's memory after each window
    (a window with changes ends when the refresh it started has finished, so it may last longer)."""
    before = _rss_mb(pid)
    rss, total, errors, failed, refreshes, reloads = [], 0, 0, {}, 0, 0
    window = min(60.0, args.soak)
    t0 = time.perf_counter()
    t_end = t0 + args.soak
    while (left := t_end - time.perf_counter()) > 1:
        if change is None:
            r = _load(fc_url, body, headers, min(window, left), args.threads)
        else:
            r, done = change(min(window, left))
            refreshes += 0 if done["refresh"] == "not available" else len(done["refresh"])
            reloads += len(done["reload"])
        total += r["requests"]
        errors += r["errors"]
        for k, v in r["_failed"].items():
            failed[k] = failed.get(k, 0) + v
        rss.append(((time.perf_counter() - t0) / 60, _rss_mb(pid)))
    changes = "" if change is None else f", {reloads} reloads and {refreshes} refreshes meanwhile"
    return (f"soak {(time.perf_counter() - t0):.0f} s, {total:,} one-lead requests{changes}, {errors} failed "
            f"{failed or ''}: funnelcast RSS (all workers, a refresh's child process excluded) {before:.0f} MB at "
            "start, then (minute: MB) " + ", ".join(f"{m:.1f}: {mb:.0f}" for m, mb in rss))


def _trained(sample: Path, cache: str | None):
    """The sample's export and a lead model trained on it (read from ``cache`` when it exists, written there)."""
    if not (sample / "export" / "leads.csv").exists():
        generate_sample(sample, progress=True)
    export, _ = load_export(sample / "export")
    if cache and Path(cache).exists():
        with open(cache, "rb") as fh:
            return export, pickle.load(fh)
    result = build_lead_model(export, TrainConfig(), export.exported_at)
    if cache:
        with open(cache, "wb") as fh:
            pickle.dump(result, fh)
    return export, result


def _servers(uri: str, tmp: str, sample: Path, workers: int, core: int | None) -> tuple[dict, int, int]:
    """funnelcast (reading the sample's export for its refreshes) and `mlflow models serve`, same workers,
    both on ``core`` when pinned."""
    env = {**os.environ, "FUNNELCAST_TRACKING_URI": uri, "MLFLOW_TRACKING_URI": uri, "FUNNELCAST_HOME": tmp,
           "FUNNELCAST_DATA": str((sample / "export").resolve()), "FUNNELCAST_ADMIN_API_KEYS": json.dumps([ADMIN]),
           "FUNNELCAST_RELOAD_POLL_SECONDS": "1",
           "FUNNELCAST_API_KEYS": json.dumps([KEY]), "FUNNELCAST_RATE_LIMIT_PER_MINUTE": "0",
           # mlflow serve execs `uvicorn` by name: it must be on PATH
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    fc_port, ml_port = _port(), _port()
    servers = {
        "funnelcast": subprocess.Popen(_pinned(
            [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(fc_port), "--workers", str(workers), "--log-level", "warning"], core),
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        "mlflow": subprocess.Popen(_pinned(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/lead_quality@champion",
             "--env-manager", "local", "--host", "127.0.0.1", "-p", str(ml_port), "-w", str(workers)], core),
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    }
    return servers, fc_port, ml_port


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", default=".funnelcast/sample")
    ap.add_argument("--model-cache", help="pickle of the trained model: read when it exists, else written "
                    "(delete it after changing training code)")
    ap.add_argument("--seconds", type=float, default=20, help="duration of each load case")
    ap.add_argument("--soak", type=float, default=600, help="soak duration (one-lead requests), 0 to skip")
    ap.add_argument("--soak-quiet", action="store_true", help="no reloads and refreshes during the soak")
    ap.add_argument("--generator", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python",
                    help="load generator of the side-by-side cases (default: wrk when installed)")
    ap.add_argument("--connections", type=int, default=4, help="wrk's connections (one wrk thread)")
    ap.add_argument("--threads", type=int, default=4, help="client threads of the Python generator")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn workers per server")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=(os.cpu_count() or 1) >= 2,
                    help="servers on core 0, the load generator on core 1 (taskset; default with 2+ cores)")
    ap.add_argument("--during", nargs="*", default=["reload", "refresh"], choices=("reload", "refresh"),
                    help="what changes during the last case (default both; none: skip the case)")
    ap.add_argument("--change-every", type=float, default=2.0, help="seconds between changes in the last case")
    return ap.parse_args()


def _cases(fc_url: str, ml_url: str, bodies: dict, fc_headers: dict, args: argparse.Namespace,
           pids: dict[str, int]) -> list[dict]:
    """The side-by-side cases, each with the server's CPU time per request (all its processes)."""
    ml_headers = {"Content-Type": "application/json"}
    rows = []
    for name, server, url, body, headers in [
        ("funnelcast, 1 lead + reasons", "funnelcast", fc_url, bodies["one"], fc_headers),
        ("mlflow serve, 1 lead, no reasons", "mlflow", ml_url, bodies["ml"], ml_headers),
        ("funnelcast, 100 leads + reasons", "funnelcast", fc_url, bodies["hundred"], fc_headers),
    ]:
        cpu0 = _cpu_seconds(pids[server])
        if args.generator == "wrk":
            row = _load_wrk(url, body, headers, args.seconds, args.connections, 1 if args.pin else None)
        else:
            row = _load(url, body, headers, args.seconds, args.threads)
        row["server_cpu_ms"] = (_cpu_seconds(pids[server]) - cpu0) * 1000 / max(row["requests"], 1)
        rows.append({"case": name, **row})
    return rows


def main() -> None:
    args = _args()
    sample = Path(args.sample)
    export, result = _trained(sample, args.model_cache)
    as_of = export.exported_at
    leads = open_leads(export.leads, as_of)
    one, hundred = leads.iloc[[0]], leads.iloc[:100]
    X_one = result.scorer.features(one, export.accounts, export.activities, as_of)
    bodies = {name: json.dumps({"as_of": as_of.isoformat(),
                                "leads": export_items(frame, export.accounts, export.activities, as_of)}).encode()
              for name, frame in (("one", one), ("hundred", hundred))}
    bodies["ml"] = json.dumps({"dataframe_split": json.loads(X_one.to_json(orient="split", index=False))}).encode()
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        versions = [log_and_register(result, configure(uri), experiment="load", artifact_location=Path(tmp, "a").as_uri(),
                                     cfg=TrainConfig(), data_source=str(sample)).version for _ in range(2)]  # to flip between
        servers, fc_port, ml_port = _servers(uri, tmp, sample, args.workers, 0 if args.pin else None)
        if args.pin:  # the Python generator's threads (and this script) stay off the servers' core
            os.sched_setaffinity(0, {1})
        try:
            _wait(f"http://127.0.0.1:{fc_port}/readyz")
            _wait(f"http://127.0.0.1:{ml_port}/ping")
            fc_url = f"http://127.0.0.1:{fc_port}/v1/leads/score"
            ml_url = f"http://127.0.0.1:{ml_port}/invocations"
            fc_headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
            # sanity: both answer, and agree on the probability
            p_fc = httpx.post(fc_url, content=bodies["one"], headers=fc_headers, timeout=30).json()["scores"][0]["probability"]
            p_ml = httpx.post(ml_url, content=bodies["ml"], headers={"Content-Type": "application/json"}, timeout=30).json()
            p_ml = p_ml["predictions"][0]["probability"]
            rows = _cases(fc_url, ml_url, bodies, fc_headers, args, {k: p.pid for k, p in servers.items()})
            note = None

            def change(seconds: float):
                return _under_change(fc_port, uri, versions, bodies["one"], fc_headers, args, seconds)

            if args.during:
                row, done = change(args.seconds)
                rows.append({"case": "funnelcast, 1 lead, champion changing + refreshes", **row})
                note = _change_note(row, done, args.during)
            load = (f"wrk, {args.connections} connections" if args.generator == "wrk"
                    else f"Python generator, {args.threads} threads")
            pin = "servers on core 0, generator on core 1" if args.pin else "not pinned"
            print(f"\nloopback, {args.workers} uvicorn worker(s) per server ({_uvicorn_extras()}), {load} ({pin}), "
                  f"{args.seconds:.0f} s per case, load average before {os.getloadavg()[0]:.1f} (probability "
                  f"funnelcast {p_fc:.6f} vs mlflow {p_ml:.6f})")
            print(pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
                  .round(1).to_string(index=False))
            fc, ml = rows[0], rows[1]
            print(f"funnelcast / mlflow, one lead: {fc['rps'] / ml['rps']:.2f}x the requests per second, p99 "
                  f"{fc['p99_ms']:.1f} vs {ml['p99_ms']:.1f} ms, server CPU per request {fc['server_cpu_ms']:.2f} "
                  f"vs {ml['server_cpu_ms']:.2f} ms")
            if note:
                print(f"champion changing: {note}")
            if args.soak > 0:
                print(_soak(fc_url, servers["funnelcast"].pid, bodies["one"], fc_headers, args,
                            None if args.soak_quiet or not args.during else change))
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

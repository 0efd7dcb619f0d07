"""Serving speed: one lead and a batch of 1,000 leads, with reasons, in-process and over HTTP.

Trains a model on the sample into a temporary MLflow store, then times
``LeadScorer.score`` directly and ``POST /v1/leads/score`` on a uvicorn server on
127.0.0.1 (one worker), and prints p50/p99 per case.

    python benchmarks/serving_speed.py [--sample DIR] [--repeats N] [--no-http]
    python benchmarks/serving_speed.py --compare OTHER_TREE [--rounds 3]

``--compare`` times the in-process cases of this tree and of another checkout (say the
main branch) side by side: one process per tree trains the same model on the same sample,
then the two take turns in short slices of calls (the order swapped every round, the other
one idle meanwhile), so a machine whose load drifts weighs on both alike. Its third case is
one whole ``POST /v1/leads/score`` of one lead through the app (validation, middleware, typing
the records, scoring, reasons, the served-score log), called as ASGI in the process, no HTTP
client or socket: its CPU time per call is what a worker spends on it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from features.io import load_export
from features.pit import open_leads
from features.sample import generate_sample
from models.registry import configure
from serving.records import export_items
from training.train import TrainConfig, build_lead_model

try:
    from training.pipeline import log_and_register
except ImportError:  # a checkout from before the one training path (`--compare` against an older tree)
    from training.train import log_and_register

HERE = Path(__file__).resolve()
CASES = ("1 lead + reasons", "1,000 leads + reasons")
REQUEST = "1 lead, whole request (ASGI)"


def _timeit(fn, repeats: int, warm_up: bool = True) -> np.ndarray:
    """Milliseconds per call: wall clock (row 0) and CPU time of the process, all threads (row 1)."""
    if warm_up:
        fn()
    out = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        out.append(((time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000))
    return np.array(out).reshape(-1, 2).T


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trained_on_sample(sample: Path, cache: str | None = None):
    """The sample's export (generated when missing), a lead model trained on it at its export time, and the
    config; the model is read from ``cache`` (a pickle) when that exists, and written there when given."""
    import pickle

    if not (sample / "export" / "leads.csv").exists():
        generate_sample(sample, progress=True)
    export, _ = load_export(sample / "export")
    cfg = TrainConfig()
    if cache and Path(cache).exists():
        return export, pickle.loads(Path(cache).read_bytes()), cfg
    result = build_lead_model(export, cfg, export.exported_at)
    if cache:
        Path(cache).write_bytes(pickle.dumps(result))
    return export, result, cfg


def _cases(export) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One open lead and 1,000 open leads (seeded) at the export time (all of them on a sample with fewer)."""
    leads = open_leads(export.leads, export.exported_at)
    if len(leads) < 1000:
        print(f"only {len(leads):,} leads open at {export.exported_at}: the batch case scores all of them", file=sys.stderr)
    return leads.iloc[[0]], leads.sample(n=min(1000, len(leads)), random_state=0)


def _score_calls(export, scorer) -> dict[str, Callable[[], object]]:
    """Per case, one ``scorer.score`` call with what a request carries: the leads, their accounts and activities."""
    as_of = export.exported_at
    calls = {}
    for case, leads in zip(CASES, _cases(export), strict=True):
        acc = export.accounts[export.accounts["account_id"].isin(leads["account_id"])]
        acts = export.activities[export.activities["lead_id"].isin(leads["lead_id"])]
        calls[case] = lambda leads=leads, acc=acc, acts=acts: scorer.score(leads, acc, acts, as_of)
    return calls


def in_process(export, scorer, repeats: int) -> dict[str, np.ndarray]:
    """Milliseconds per ``scorer.score`` call: one lead, and 1,000 leads (``repeats // 10`` calls)."""
    calls = _score_calls(export, scorer)
    return {case: _timeit(calls[case], n) for case, n in zip(CASES, (repeats, max(5, repeats // 10)), strict=True)}


def _over_http(export, result, cfg, sample: Path, repeats: int) -> dict[str, np.ndarray]:
    """Milliseconds per ``POST /v1/leads/score`` on a one-worker uvicorn server: one lead and 1,000."""
    as_of = export.exported_at
    one, batch = _cases(export)
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        log_and_register(result, configure(uri), experiment="bench", artifact_location=Path(tmp, "a").as_uri(),
                         cfg=cfg, data_source=str(sample))
        port = free_port()
        env = {**os.environ, "FUNNELCAST_TRACKING_URI": uri, "FUNNELCAST_API_KEYS": '["bench-key"]'}
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
            env=env,
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": "bench-key"}, timeout=60) as client:
                for _ in range(300):
                    try:
                        if client.get("/readyz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(0.2)
                else:
                    raise SystemExit("server did not become ready")
                hdr = {"Content-Type": "application/json"}

                def post(leads: pd.DataFrame) -> Callable[[], object]:
                    body = json.dumps({"as_of": as_of.isoformat(), "leads": export_items(leads, export.accounts, export.activities, as_of)})
                    return lambda: client.post("/v1/leads/score", content=body, headers=hdr).raise_for_status()

                return {"1 lead + reasons": _timeit(post(one), repeats),
                        "1,000 leads + reasons": _timeit(post(batch), max(5, repeats // 10))}
        finally:
            server.terminate()
            server.wait(timeout=30)


def _table(timings: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """One row per (case, where): calls, p50 and p99 in ms (wall clock), and the p50 of the
    CPU time per call (all threads: it hardly depends on what else the machine runs)."""
    rows = [{"case": case, "where": where, "calls": ms.shape[1], "p50_ms": np.percentile(ms[0], 50),
             "p99_ms": np.percentile(ms[0], 99), "cpu_p50_ms": np.percentile(ms[1], 50)}
            for where, cases in timings.items() for case, ms in cases.items()]
    return pd.DataFrame(rows).round(2)


def _asgi_call(export, scorer, home: Path) -> tuple[Callable[[], object], Callable[[], None]]:
    """One ``POST /v1/leads/score`` of one lead through the whole app as an ASGI call (``call``), and
    ``close`` (the app's shutdown: its served-score log flushed)."""
    import asyncio

    from features.settings import Settings
    from models.registry import LoadedModel
    from serving.app import create_app

    as_of = export.exported_at
    one = _cases(export)[0]
    body = json.dumps({"as_of": as_of.isoformat(), "leads": export_items(one, export.accounts, export.activities, as_of)}).encode()
    settings = Settings(home=home, api_keys=["bench-key"], tracking_uri=f"sqlite:///{home / 'none.db'}",
                        rate_limit_per_minute=0)
    app = create_app(settings, preloaded={"lead_quality": LoadedModel("lead_quality", "1", "champion", None, scorer)})
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/leads/score", "raw_path": b"/v1/leads/score", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"bench"), (b"content-type", b"application/json"), (b"x-api-key", b"bench-key"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    loop = asyncio.new_event_loop()
    lifespan = app.router.lifespan_context(app)
    loop.run_until_complete(lifespan.__aenter__())

    async def request() -> None:
        sent, messages = [], [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        await app(dict(scope), receive, send)
        if sent[0]["status"] != 200:
            raise SystemExit(f"the app answered {sent[0]['status']}: {sent[1:]}")

    return (lambda: loop.run_until_complete(request()),
            lambda: loop.run_until_complete(lifespan.__aexit__(None, None, None)))


def _worker(sample: Path, cache: str | None) -> None:
    """``--compare``'s child: train, say ``ready``, then for each ``case<TAB>calls`` line on stdin print the milliseconds."""
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the answers only
        export, result, _ = trained_on_sample(sample, cache)
    calls = _score_calls(export, result.scorer)
    with tempfile.TemporaryDirectory() as home:
        calls[REQUEST], close = _asgi_call(export, result.scorer, Path(home))
        for fn in calls.values():
            fn()  # warm-up
        print("ready", flush=True)
        for line in sys.stdin:
            case, n = line.rstrip("\n").split("\t")
            print(json.dumps(_timeit(calls[case], int(n), warm_up=False).tolist()), flush=True)
        close()


def _compare(args: argparse.Namespace) -> None:
    """The in-process cases of this tree and of ``args.compare``, in interleaved slices (see the module doc)."""
    sample = Path(args.sample).resolve()
    if not (sample / "export" / "leads.csv").exists():
        generate_sample(sample, progress=True)
    trees = {"this tree": HERE.parents[1], "compared": Path(args.compare).resolve()}
    workers = {
        name: subprocess.Popen([sys.executable, str(HERE), "--sample", str(sample), "--worker",
                                *(["--model-cache", str(Path(args.model_cache).resolve())] if args.model_cache else [])],
                               env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for name, tree in trees.items()
    }
    calls: dict[str, dict[str, list[list[float]]]] = {name: {case: [[], []] for case in (*CASES, REQUEST)}
                                                      for name in trees}
    try:
        for name, w in workers.items():
            if w.stdout.readline().strip() != "ready":
                raise SystemExit(f"the benchmark of {trees[name]} did not start")
        order = list(workers)
        for r in range(args.rounds):
            for case, n in zip((*CASES, REQUEST), (20, 2, 20), strict=True):
                for name in order if r % 2 == 0 else order[::-1]:
                    workers[name].stdin.write(f"{case}\t{n}\n")
                    workers[name].stdin.flush()
                    wall, cpu = json.loads(workers[name].stdout.readline())
                    calls[name][case][0] += wall
                    calls[name][case][1] += cpu
    finally:
        for w in workers.values():
            w.stdin.close()
            w.wait(timeout=120)
    timings = {f"{name} ({trees[name]})": {c: np.array(ms) for c, ms in cases.items()} for name, cases in calls.items()}
    print(_table(timings).to_string(index=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", default=".funnelcast/bench-sample")
    ap.add_argument("--repeats", type=int, default=200, help="timed calls for one lead (batch: repeats/10)")
    ap.add_argument("--no-http", action="store_true", help="only the in-process cases")
    ap.add_argument("--compare", metavar="TREE", help="another checkout to time in turns with this one (in-process)")
    ap.add_argument("--rounds", type=int, default=15,
                    help="with --compare: turns per tree (each 20 one-lead calls, 2 batch calls, 20 requests)")
    ap.add_argument("--model-cache", help="pickle of the trained model: read when it exists, else written "
                    "(delete it after changing training code)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # --compare's child
    args = ap.parse_args()
    if args.worker:
        _worker(Path(args.sample), args.model_cache)
        return
    if args.compare:
        _compare(args)
        return
    sample = Path(args.sample)
    export, result, cfg = trained_on_sample(sample, args.model_cache)
    timings = {"in-process": in_process(export, result.scorer, args.repeats)}
    if not args.no_http:
        timings["HTTP"] = _over_http(export, result, cfg, sample, args.repeats)
    print(_table(timings).to_string(index=False))
    print("\nTargets (issue 2, 2 cores): one lead p50 < 10 ms in-process; 1,000 leads < 250 ms")


if __name__ == "__main__":
    main()

"""Serving speed: one lead and a batch of 1,000 leads, with reasons, in-process and over HTTP.

Trains a model on the sample into a temporary MLflow store, then times
``LeadScorer.score`` directly and ``POST /v1/leads/score`` on a uvicorn server on
127.0.0.1 (one worker), and prints p50/p99 per case.

    python benchmarks/serving_speed.py [--sample DIR] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
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


def _timeit(fn, repeats: int) -> np.ndarray:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return np.array(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", default=".funnelcast/bench-sample")
    ap.add_argument("--repeats", type=int, default=200, help="timed calls for one lead (batch: repeats/10)")
    args = ap.parse_args()
    sample = Path(args.sample)
    if not (sample / "export" / "leads.csv").exists():
        generate_sample(sample, progress=True)
    export, _ = load_export(sample / "export")
    as_of = export.exported_at
    cfg = TrainConfig()
    result = build_lead_model(export, cfg, as_of)
    scorer = result.scorer
    leads = open_leads(export.leads, as_of)
    if len(leads) < 1000:
        raise SystemExit(f"only {len(leads)} leads open at {as_of}: use a larger sample")
    batch = leads.sample(n=1000, random_state=0)
    one = leads.iloc[[0]]
    acts_one = export.activities[export.activities["lead_id"] == one["lead_id"].iloc[0]]
    acc_one = export.accounts[export.accounts["account_id"].isin(one["account_id"])]

    rows = []

    def add(case: str, where: str, ms: np.ndarray) -> None:
        rows.append({"case": case, "where": where, "calls": len(ms), "p50_ms": np.percentile(ms, 50), "p99_ms": np.percentile(ms, 99)})

    add("1 lead + reasons", "in-process", _timeit(lambda: scorer.score(one, acc_one, acts_one, as_of), args.repeats))
    # what a request carries: these leads' accounts and activities
    acc_b = export.accounts[export.accounts["account_id"].isin(batch["account_id"])]
    acts_b = export.activities[export.activities["lead_id"].isin(batch["lead_id"])]
    add("1,000 leads + reasons", "in-process",
        _timeit(lambda: scorer.score(batch, acc_b, acts_b, as_of), max(5, args.repeats // 10)))

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        log_and_register(result, configure(uri), experiment="bench", artifact_location=Path(tmp, "a").as_uri(),
                         cfg=cfg, data_source=str(sample))
        port = _free_port()
        env = {**os.environ, "FUNNELCAST_TRACKING_URI": uri, "FUNNELCAST_API_KEYS": '["bench-key"]'}
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
            env=env,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, headers={"X-API-Key": "bench-key"}, timeout=60) as client:
                for _ in range(300):
                    try:
                        if client.get("/readyz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(0.2)
                else:
                    raise SystemExit("server did not become ready")
                one_body = json.dumps({"as_of": as_of.isoformat(), "leads": export_items(one, export.accounts, export.activities, as_of)})
                batch_body = json.dumps({"as_of": as_of.isoformat(), "leads": export_items(batch, export.accounts, export.activities, as_of)})
                hdr = {"Content-Type": "application/json"}

                def post(body: str) -> None:
                    r = client.post("/v1/leads/score", content=body, headers=hdr)
                    r.raise_for_status()

                add("1 lead + reasons", "HTTP", _timeit(lambda: post(one_body), args.repeats))
                add("1,000 leads + reasons", "HTTP", _timeit(lambda: post(batch_body), max(5, args.repeats // 10)))
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(pd.DataFrame(rows).round(2).to_string(index=False))
    print("\nTargets (issue 2, 2 cores): one lead p50 < 10 ms in-process; 1,000 leads < 250 ms")


if __name__ == "__main__":
    main()

"""Hostile clients against a running server: Schemathesis over every operation, and a chunked body
far over the limit while the server's memory is watched.

    python benchmarks/fuzz.py [--examples 500] [--stateful 200] [--chunked-mb 60] [--scale 0.05]

A generated sample (seed 7) is the server's export; the lead and deal models are trained on it
and the high-value model on a larger sample (``--account-scale``, the small one has too few
customers with a value), all logged to a fresh project home, served by ``uvicorn`` on loopback
(one worker) after one refresh, so the score feed and history have data.

1. **Fuzzing**: every operation of the served OpenAPI document, ``--examples`` generated cases
   each (derandomized, so a rerun sends the same requests), then ``--stateful`` scenarios
   following the document's OpenAPI links (feed -> history, feed -> next page, models ->
   performance). Every response is checked: no 5xx, and it matches its documented schema.
   Reported: operations, requests, server errors, schema violations (and the first few of each).
2. **Chunked body**: ``--chunked-mb`` MB sent as ``Transfer-Encoding: chunked`` (no
   ``Content-Length``) to ``POST /v1/leads/score``; reported: the status and the server's
   resident memory before and at its peak while the body was sent.
3. **The requests issue 17 found answering 500** (prospect-only accounts, deals without any
   amount or close date, ``as_of`` outside 1900-2200, funnel before the data, non-finite
   allocation values, a tiny worklist effort, booleans as numbers, integers as timestamps), each
   once; and **4 clients posting the same outcomes at once** (50 overlapping batches each over
   50 records): their statuses and the outcomes stored afterwards (one per record).
4. **A missing store**: a second server on a home without ``mlflow.db``: ``/readyz`` and
   ``GET /v1/models`` (503 naming the store and what to run), and whether the file was created.

Exit status 1 when any server error, schema violation, a non-413 chunked answer, a race that did
not store one outcome per record, or a missing store not refused (or created) was seen.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import ignored_auth, negative_data_rejection, positive_data_acceptance

from features.io import load_export
from features.sample import generate_sample
from features.settings import Settings
from models.registry import configure
from training.accounts import AccountConfig, build_high_value_model
from training.deals import DealTrainConfig, build_deal_model
from training.pipeline import log_and_register
from training.train import TrainConfig, build_lead_model

KEY, ADMIN = "fuzz-key", "fuzz-admin-key"
#: Checks that do not apply to generated data: generated timestamps may fall after ``as_of`` or
#: before the data (422 by design); server errors are counted by status, not by this check.
EXCLUDED = [positive_data_acceptance, negative_data_rejection, ignored_auth, not_a_server_error]
SEED = 7


@dataclass
class Tally:
    requests: int = 0
    server_errors: int = 0
    violations: int = 0
    examples: list[str] = field(default_factory=list)

    def check(self, case, response) -> None:
        """Count one answer: a 5xx, or one that does not match its schema (first 5 of each kept)."""
        self.requests += 1
        where = f"{case.method.upper()} {case.path} -> {response.status_code}"
        if response.status_code >= 500:
            self.server_errors += 1
            self._keep(f"server error: {where}: {response.text[:300]}")
            return
        try:
            case.validate_response(response, headers={"X-API-Key": KEY}, excluded_checks=EXCLUDED)
        except Exception as exc:  # noqa: BLE001 - a failed check is counted, and the run goes on
            self.violations += 1
            self._keep(f"schema: {where}: {str(exc)[:300]}")

    def _keep(self, text: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(text)


def fuzz_operations(schema, examples: int, tally: Tally) -> int:
    """``examples`` derandomized cases of every operation; the number of operations."""
    operations = [result.ok() for result in schema.get_all_operations()]
    for op in operations:

        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case):
            tally.check(case, case.call(headers={"X-API-Key": KEY}, timeout=120))

        started = time.perf_counter()
        run()
        print(f"  {op.method.upper():5} {op.path}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return len(operations)


def fuzz_stateful(schema, scenarios: int, tally: Tally) -> int:
    """``scenarios`` sequences following the OpenAPI links; the number of links followed."""
    machine = schema.as_state_machine()
    links = sum(len(v.get("links", {})) for p in schema.raw_schema["paths"].values() for o in p.values()
                if isinstance(o, dict) for v in o.get("responses", {}).values() if isinstance(v, dict))

    class Machine(machine):  # type: ignore[misc, valid-type]
        def before_call(self, case):
            case.headers = {**(case.headers or {}), "X-API-Key": KEY}  # scenarios may drop it (a 401 each)

        def get_call_kwargs(self, case):
            return {"timeout": 120}

        def validate_response(self, response, case, additional_checks=(), **kwargs):
            tally.check(case, response)

    Machine.run(settings=settings(max_examples=scenarios, deadline=None, derandomize=True, database=None,
                                  stateful_step_count=6, suppress_health_check=list(HealthCheck)))
    return links


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def chunked(base: str, pid: int, megabytes: int) -> dict:
    """``megabytes`` MB as a chunked body; the status and the server's RSS before and at its peak."""
    chunk = b" " * 65536  # whitespace: valid JSON padding, so only the size can refuse it
    peak, stop = [rss_mb(pid)], threading.Event()
    before = peak[0]

    def watch() -> None:
        while not stop.is_set():
            peak.append(rss_mb(pid))
            time.sleep(0.02)

    def body():
        yield b'{"leads": ['
        for _ in range(megabytes * 1024 * 1024 // len(chunk)):
            yield chunk
        yield b"]}"

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        r = httpx.post(f"{base}/v1/leads/score", content=body(), timeout=120,
                       headers={"X-API-Key": KEY, "Content-Type": "application/json"})
        status, detail = r.status_code, r.text[:200]
    except httpx.TransportError as exc:  # the server may close the connection after its 413
        status, detail = None, f"{type(exc).__name__}: {exc}"
    time.sleep(0.5)
    stop.set()
    watcher.join()
    return {"status": status, "detail": detail, "rss_before_mb": before, "rss_peak_mb": max(peak),
            "growth_mb": max(peak) - before}


def _deal(i: int, **fields) -> dict:
    opp = {"opportunity_id": f"d{i}", "account_id": f"a{i}", "created_at": "2027-01-05", "stage": "proposal", **fields}
    return {"opportunity": opp, "stage_history": [{"stage": "qualification", "entered_at": "2027-01-05"},
                                                  {"stage": "proposal", "entered_at": "2027-02-01"}]}


def _listed() -> list[tuple[str, str, str, dict]]:
    """The requests issue 17 found answering 500: (what, method, path, httpx keyword arguments)."""
    prospects = {"as_of": "2027-06-01T00:00:00Z", "accounts": [
        {"account": {"account_id": "p1", "created_at": "2027-01-01", "industry": "software", "employees": 40}},
        {"account": {"account_id": "p2", "created_at": "2027-02-01"}, "opportunities": [
            {"opportunity_id": "o1", "created_at": "2027-03-01", "stage": "proposal", "amount": 900}]}]}
    out = [("accounts, prospects only", "POST", "/v1/accounts/score", {"json": prospects})]
    for missing in ("amount", "expected_close_date"):
        given = {k: v for k, v in {"amount": 5000.0, "expected_close_date": "2027-05-01"}.items() if k != missing}
        out.append((f"deals, none with {missing}", "POST", "/v1/opportunities/score",
                    {"json": {"as_of": "2027-03-01T00:00:00Z", "opportunities": [_deal(1, **given), _deal(2, **given)]}}))
    for as_of in ("1500-01-01T00:00:00Z", "2300-01-01T00:00:00Z", "2360-06-01T00:00:00Z"):
        out += [(f"deals as_of {as_of[:4]}", "POST", "/v1/opportunities/score",
                 {"json": {"as_of": as_of, "opportunities": [_deal(1, amount=5.0)]}}),
                (f"accounts as_of {as_of[:4]}", "POST", "/v1/accounts/score",
                 {"json": {"as_of": as_of, "accounts": [{"account": {"account_id": "p1", "created_at": "2026-01-01"}}]}}),
                (f"funnel as_of {as_of[:4]}", "GET", "/v1/funnel", {"params": {"as_of": as_of}}),
                (f"forecast as_of {as_of[:4]}", "GET", "/v1/forecast", {"params": {"as_of": as_of}})]
    out.append(("funnel as_of before the data", "GET", "/v1/funnel", {"params": {"as_of": "1950-01-01T00:00:00Z"}}))
    for value in ("Infinity", "1e309"):
        raw = '{"reps": [{"owner_id": "a", "capacity": 2}], "items": [{"item_id": "x", "expected_value": ' + value + "}]}"
        out.append((f"allocation expected_value {value}", "POST", "/v1/allocation",
                    {"content": raw, "headers": {"Content-Type": "application/json"}}))
    out.append(("worklist effort_account 5e-324", "GET", "/v1/worklist", {"params": {"effort_account": "5e-324"}}))
    for field_name, value in (("employees", True), ("created_at", 1700000000)):
        account = {"account_id": "p1", "created_at": "2026-01-01", field_name: value}
        out.append((f"accounts {field_name}={json.dumps(value)}", "POST", "/v1/accounts/score",
                    {"json": {"accounts": [{"account": account}]}}))
    return out


def listed_requests(base: str) -> list[tuple[str, int]]:
    """Each request of :func:`_listed` once: (what, status)."""
    out = []
    with httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=300) as client:
        for what, method, path, kwargs in _listed():
            headers = {**client.headers, **kwargs.pop("headers", {})}
            out.append((what, client.request(method, path, headers=headers, **kwargs).status_code))
    return out


def outcome_race(base: str, clients: int = 4, requests: int = 50, records: int = 50) -> dict:
    """``clients`` threads posting the same outcomes at once, ``requests`` batches each (10 records a
    batch, overlapping); the statuses, and the outcomes stored for those records afterwards."""
    ids = [f"race-{i}" for i in range(records)]

    def stored() -> int:
        r = httpx.get(f"{base}/v1/models/lead_quality/performance", headers={"X-API-Key": KEY}, timeout=60)
        return r.json()["outcomes_stored"]

    before, statuses, lock = stored(), [], threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=120) as http:
            for j in range(requests):
                batch = [{"record_id": ids[(j + k) % records], "outcome": "converted",
                          "occurred_at": "2027-01-01T00:00:00Z"} for k in range(10)]
                code = http.post("/v1/outcomes", json={"outcomes": batch}).status_code
                with lock:
                    statuses.append(code)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"requests": len(statuses), "server_errors": sum(s >= 500 for s in statuses),
            "statuses": sorted(set(statuses)), "records": records, "stored": stored() - before}


def missing_store(port: int) -> dict:
    """A server on a home without ``mlflow.db``: /readyz and /v1/models, and whether the file appeared."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / ".funnelcast"
        home.mkdir()
        server = _serve(home, f"sqlite:///{home / 'mlflow.db'}", port, data=None)
        base = f"http://127.0.0.1:{port}"
        try:
            ready = _wait_answering(base, server)
            listed = httpx.get(f"{base}/v1/models", headers={"X-API-Key": KEY}, timeout=30)
        finally:
            server.terminate()
            server.wait(30)
        return {"readyz": ready.status_code, "store": ready.json().get("store"), "models": listed.status_code,
                "models_detail": listed.json().get("detail"), "created": (home / "mlflow.db").exists()}


def _train(home: Path, scale: float, account_scale: float) -> str:
    """The sample export (the server's data) and the three models logged into ``home``'s store."""
    generate_sample(home / "sample", seed=SEED, scale=scale)
    export, _ = load_export(home / "sample" / "export")
    generate_sample(home / "hv", seed=SEED, scale=account_scale)
    hv_export, _ = load_export(home / "hv" / "export")
    s = Settings(home=home, tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    client = configure(s.resolved_tracking_uri(), home=home)
    lead_cfg, deal_cfg = TrainConfig(horizon_days=91, snapshot_every_days=28, seed=SEED), DealTrainConfig(
        snapshot_every_days=28, seed=SEED)
    hv_cfg = AccountConfig(n_bootstrap=5, seed=SEED)
    for result, cfg, source in ((build_lead_model(export, lead_cfg, export.exported_at), lead_cfg, "sample"),
                                (build_deal_model(export, deal_cfg, export.exported_at), deal_cfg, "sample"),
                                (build_high_value_model(hv_export, hv_cfg, hv_export.exported_at), hv_cfg, "hv")):
        log_and_register(result, client, experiment="fuzz", artifact_location=s.artifact_location(), cfg=cfg,
                         data_source=str(home / source / "export"), force=True)
    return s.resolved_tracking_uri()


def _serve(home: Path, uri: str, port: int, data: str | None = "sample/export") -> subprocess.Popen:
    env = {**os.environ, "FUNNELCAST_HOME": str(home), "FUNNELCAST_TRACKING_URI": uri,
           **({"FUNNELCAST_DATA": str(home / data)} if data else {}), "FUNNELCAST_API_KEYS": json.dumps([KEY]),
           "FUNNELCAST_ADMIN_API_KEYS": json.dumps([ADMIN]), "FUNNELCAST_RATE_LIMIT_PER_MINUTE": "0",
           "FUNNELCAST_FAILED_KEYS_PER_MINUTE": "0", "FUNNELCAST_RELOAD_POLL_SECONDS": "3600"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory", "--host",
                             "127.0.0.1", "--port", str(port), "--workers", "1", "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_ready(base: str, server: subprocess.Popen, timeout: float = 300) -> None:
    if _wait_answering(base, server, timeout, until_ready=True).status_code != 200:
        raise SystemExit(f"the server was not ready within {timeout:.0f} s")


def _wait_answering(base: str, server: subprocess.Popen, timeout: float = 300,
                    until_ready: bool = False) -> httpx.Response:
    """The first ``/readyz`` answer (uvicorn answers once the app's start-up, loading the models, is
    done), ready or not; polled until a 200 when ``until_ready``."""
    end, last = time.time() + timeout, None
    while time.time() < end:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            last = httpx.get(f"{base}/readyz", timeout=5)
            if last.status_code == 200 or not until_ready:
                return last
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    if last is None:
        raise SystemExit(f"the server did not answer within {timeout:.0f} s")
    return last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=500, help="generated cases per operation")
    ap.add_argument("--stateful", type=int, default=200, help="stateful scenarios following the OpenAPI links")
    ap.add_argument("--chunked-mb", type=int, default=60)
    ap.add_argument("--scale", type=float, default=0.05, help="size of the served sample")
    ap.add_argument("--account-scale", type=float, default=0.3, help="size of the high-value model's sample")
    ap.add_argument("--port", type=int, default=0, help="0: a free port")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / ".funnelcast"
        uri = _train(home, args.scale, args.account_scale)
        port = args.port or _free_port()
        base = f"http://127.0.0.1:{port}"
        server = _serve(home, uri, port)
        try:
            _wait_ready(base, server)
            refreshed = httpx.post(f"{base}/v1/admin/refresh", headers={"X-API-Key": ADMIN}, timeout=300)
            assert refreshed.status_code == 200, refreshed.text  # the feed and history need one snapshot
            memory = chunked(base, server.pid, args.chunked_mb)  # first: before fuzzing grows the caches
            listed, race = listed_requests(base), outcome_race(base)  # before fuzzing posts other outcomes
            schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
            stateless, stateful = Tally(), Tally()
            operations = fuzz_operations(schema, args.examples, stateless)
            links = fuzz_stateful(schema, args.stateful, stateful)
        finally:
            server.terminate()
            server.wait(30)
    store = missing_store(_free_port())
    _report(args, operations, links, stateless, stateful, memory)
    bad = _report_hostile(listed, race, store)
    bad += stateless.server_errors + stateless.violations + stateful.server_errors + stateful.violations
    sys.exit(1 if bad or memory["status"] != 413 else 0)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _report(args, operations: int, links: int, stateless: Tally, stateful: Tally, memory: dict) -> None:
    print(f"| run | operations | requests | server errors (5xx) | schema violations |\n|---|---|---|---|---|")
    print(f"| {args.examples} examples per operation | {operations} | {stateless.requests:,} | "
          f"{stateless.server_errors} | {stateless.violations} |")
    print(f"| stateful, {args.stateful} scenarios over {links} links | - | {stateful.requests:,} | "
          f"{stateful.server_errors} | {stateful.violations} |")
    print(f"\nchunked body of {args.chunked_mb} MB to POST /v1/leads/score: status {memory['status']}, server RSS "
          f"{memory['rss_before_mb']:.0f} MB before, {memory['rss_peak_mb']:.0f} MB at peak "
          f"(+{memory['growth_mb']:.0f} MB)")
    for line in stateless.examples + stateful.examples:
        print("  " + line)


def _report_hostile(listed: list[tuple[str, int]], race: dict, store: dict) -> int:
    """Print the listed requests, the race and the missing store; the number of failures."""
    print("\n| request that once answered 500 | status |\n|---|---|")
    for what, status in listed:
        print(f"| {what} | {status} |")
    print(f"\n{race['requests']} outcome batches from 4 clients at once over {race['records']} records: "
          f"{race['server_errors']} 5xx (statuses {race['statuses']}), {race['stored']} outcomes stored")
    print(f"\nmissing store: /readyz {store['readyz']} (store {json.dumps(store['store'])}), "
          f"GET /v1/models {store['models']} ({store['models_detail']}); mlflow.db created: {store['created']}")
    bad = sum(status >= 500 for _, status in listed) + race["server_errors"] + (race["stored"] != race["records"])
    return bad + (store["readyz"] != 503) + (store["models"] != 503) + store["created"]


if __name__ == "__main__":
    main()

"""``funnelcast serve``: the scoring API under uvicorn.

Serving contributes this command to the ``funnelcast`` CLI through the ``funnelcast.commands``
entry point (pyproject.toml), so the CLI in ``training`` finds it without importing serving:
training and serving never import each other.
"""

from __future__ import annotations

import argparse
import copy
import csv
import sys
from pathlib import Path

from features.engine import add_engine_args, engine_from, engine_session
from features.errors import FunnelcastError
from features.settings import Settings

__all__ = ["CRM_FIELDS", "export_scores", "log_config", "register", "serve"]

#: Per CRM: the id column its import matches records on, then our columns as its custom fields.
CRM_FIELDS = {
    "salesforce": {"id": "Id", "score": "Funnelcast_Score__c", "grade": "Funnelcast_Grade__c",
                   "probability": "Funnelcast_Probability__c", "expected_value": "Funnelcast_Expected_Value__c",
                   "trend": "Funnelcast_Trend__c", "reasons": "Funnelcast_Reasons__c",
                   "refreshed_at": "Funnelcast_Scored_At__c", "as_of": "Funnelcast_As_Of__c",
                   "owner_id": "Funnelcast_Owner__c", "model_version": "Funnelcast_Model_Version__c"},
    "hubspot": {"id": "Record ID", "score": "funnelcast_score", "grade": "funnelcast_grade",
                "probability": "funnelcast_probability", "expected_value": "funnelcast_expected_value",
                "trend": "funnelcast_trend", "reasons": "funnelcast_reasons", "refreshed_at": "funnelcast_scored_at",
                "as_of": "funnelcast_as_of", "owner_id": "funnelcast_owner", "model_version": "funnelcast_model_version"},
}
#: The CRM object each kind of score is written back to (named in the file's guide, docs/guides/crm-sync.md).
CRM_OBJECTS = {"salesforce": {"lead": "Lead", "deal": "Opportunity", "account": "Account"},
               "hubspot": {"lead": "Contacts", "deal": "Deals", "account": "Companies"}}


def log_config() -> dict:
    """uvicorn's logging configuration plus the ``funnelcast`` loggers at INFO on the console, as uvicorn's
    lines read (``INFO:     funnelcast.refresh: refreshing at start ...``): without it ``funnelcast.*`` had no
    handler, and the refresh's lines were lost. They do not propagate, so nothing prints them twice (the JSON
    access lines of ``funnelcast.access`` keep their own handler); uvicorn applies it in every worker."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["funnelcast"] = {"()": "uvicorn.logging.DefaultFormatter",
                                          "fmt": "%(levelprefix)s %(name)s: %(message)s", "use_colors": None}
    config["handlers"]["funnelcast"] = {"formatter": "funnelcast", "class": "logging.StreamHandler",
                                        "stream": "ext://sys.stderr"}
    config["loggers"]["funnelcast"] = {"handlers": ["funnelcast"], "level": "INFO", "propagate": False}
    return config


def serve(settings: Settings, host: str | None = None, port: int | None = None, workers: int = 1) -> None:
    """Serve the API on ``host:port`` (the settings' by default) with ``workers`` processes."""
    import uvicorn

    # uvicorn's worker processes import the app factory by name
    uvicorn.run("serving.app:create_app", factory=True, host=host or settings.host, port=port or settings.port,
                workers=workers, log_config=log_config())


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    settings.require_tracking_store(hint="train first: `funnelcast train` (or `funnelcast run`, which also serves)")
    host, port = args.host or settings.host, args.port or settings.port
    print(f"serving on http://{host}:{port}: the managers' page at /, OpenAPI docs at /docs")
    serve(settings, args.host, args.port, args.workers)
    return 0


def _store(settings: Settings):
    from serving.snapshots import SnapshotStore
    from serving.store import OperationsStore

    return SnapshotStore(OperationsStore(settings.resolved_store_url()))


def _cmd_refresh(args: argparse.Namespace, settings: Settings) -> int:
    from serving.app import load_models
    from serving.refresh import configured_source, refresh

    store = _store(settings)
    source = args.data or configured_source(settings)
    print(f"store: {settings.resolved_store_url()}  source: {source}  models: {settings.resolved_tracking_uri()}")
    models, problems = load_models(settings)
    with engine_session(engine_from(args, settings, announce=True)):  # --engine dask: leads scored on the cluster
        result = refresh(settings, models, store, problems, source=source)
    if result.bad_rows:
        print(f"{result.bad_rows} bad row(s) of the source skipped:\n{result.bad_rows_summary}", file=sys.stderr)
    for line in result.missing:
        print(f"not scored: {line}", file=sys.stderr)
    if result.status != "ok":
        print(f"error: refresh failed (snapshot {result.snapshot_id} recorded as failed; the last good one stays "
              f"served): {result.error}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{n} {k}s" for k, n in result.counts.items() if k != "changed")
    print(f"snapshot {result.snapshot_id}: {counts} scored ({result.counts['changed']} new or changed) "
          f"as of {result.as_of.isoformat()} in {result.duration_seconds:.1f} s")
    if result.efforts is not None:  # what "per unit of effort" means on the worklist, and where it came from
        print(f"worklist efforts ({result.efforts.unit}; FUNNELCAST_EFFORT_* overrides): "
              + "; ".join(e.label() for e in result.efforts.rows()))
    return 0


def export_scores(settings: Settings, mapping: str, kind: str, out: Path) -> int:
    """Write the latest good snapshot's ``kind`` scores with ``mapping``'s field names; rows written."""
    store = _store(settings)
    snap = store.latest()
    if snap is None:
        raise FunnelcastError(f"no scored snapshot in {settings.resolved_store_url()}: run `funnelcast refresh` first")
    frame = store.scores(snap.id)
    frame = frame[frame["kind"] == kind]
    f = CRM_FIELDS[mapping]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(list(f.values()))
        for r in frame.itertuples(index=False):
            grade = r.grade if isinstance(r.grade, str) else ""  # a NULL grade (deals, accounts) reads back NaN
            w.writerow([r.entity_id, int(r.score), grade, f"{r.probability:.3f}", f"{r.expected_value:.2f}",
                        r.trend, " | ".join(r.reasons), snap.refreshed_at.isoformat(timespec="seconds"),
                        snap.as_of.isoformat(timespec="seconds") if snap.as_of else "", r.owner_id or "",
                        f"{r.model}/{r.version}"])
    return len(frame)


def _cmd_export_scores(args: argparse.Namespace, settings: Settings) -> int:
    n = export_scores(settings, args.mapping, args.kind, Path(args.out))
    print(f"store: {settings.resolved_store_url()}: {n} {args.kind} score(s) written to {args.out} for the "
          f"{args.mapping} {CRM_OBJECTS[args.mapping][args.kind]} object, matched on {CRM_FIELDS[args.mapping]['id']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``serve``, ``refresh`` and ``export-scores`` to the ``funnelcast`` subcommands."""
    v = sub.add_parser("serve", help="serve the scoring API and the managers' page",
                       description="Serve the scoring API, its OpenAPI docs (/docs) and the managers' page (/) with "
                       "uvicorn, with the @champion of every task. At start it computes the first scored snapshot "
                       "in the background when the configured source has none of the loaded models yet "
                       "(FUNNELCAST_REFRESH_AT_START, on by default); with FUNNELCAST_REFRESH_EVERY (e.g. 15m) it "
                       "refreshes at start and on that schedule (with --workers > 1 each worker would do either: "
                       "turn both off and use cron and `funnelcast refresh` instead).")
    v.add_argument("--host", help="bind address (default FUNNELCAST_HOST or 127.0.0.1)")
    v.add_argument("--port", type=int, help="port (default FUNNELCAST_PORT or 8000)")
    v.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    v.set_defaults(func=_cmd_serve)

    r = sub.add_parser("refresh", help="score everything open now and store a snapshot the API serves",
                       description="Read the configured CRM source (FUNNELCAST_DATA: folder or SQL URL), score every "
                       "open lead, deal and account with the @champion models, compute the funnel and forecast, and "
                       "store one scored snapshot in the operations database (FUNNELCAST_STORE_URL). Cron-able: exits "
                       "non-zero when the refresh fails (the last good snapshot stays served).")
    r.add_argument("--data", help="source to read instead of FUNNELCAST_DATA")
    add_engine_args(r)
    r.set_defaults(func=_cmd_refresh)
    e = sub.add_parser("export-scores", help="write the latest scores as a CSV a CRM's import takes",
                       description="Write the latest scored snapshot's scores of one kind with the field names of "
                       "the CRM's import (Salesforce Data Loader / Bulk API upsert on Id; HubSpot import on Record "
                       "ID). See docs/guides/crm-sync.md.")
    e.add_argument("--mapping", required=True, choices=sorted(CRM_FIELDS), help="the CRM whose field names to use")
    e.add_argument("--kind", default="lead", choices=["lead", "deal", "account"], help="which scores (default lead)")
    e.add_argument("--out", required=True, help="the CSV file to write")
    e.set_defaults(func=_cmd_export_scores)

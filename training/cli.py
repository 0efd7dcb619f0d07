"""The ``funnelcast`` command: generate, train, score, serve, run. ``--help`` on each."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from features.errors import FunnelcastError
from features.settings import Settings, get_settings


def _timestamp(value: str) -> pd.Timestamp:
    from features.pit import utc

    try:
        return utc(value)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 timestamp: {value!r}") from exc


def load_data(args: argparse.Namespace, settings: Settings):
    """The export named by ``--data`` (or settings, or the sample), loaded and validated."""
    from features.io import load_export

    source = args.data or settings.data or str(settings.sample_export)
    export, report = load_export(source, open_stages=settings.open_stages, skip_bad_rows=args.skip_bad_rows)
    if report:
        print(f"skipped invalid rows in {source}:\n{report.summary()}", file=sys.stderr)
    return source, export


def mlflow_client(settings: Settings):
    """An MLflow client on the configured tracking/registry store (SQLite under home by default)."""
    from models.registry import configure

    settings.home.mkdir(parents=True, exist_ok=True)
    return configure(settings.resolved_tracking_uri())


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from features.sample import generate_sample

    out = Path(args.out or settings.sample_dir)
    summary = generate_sample(out, seed=args.seed, scale=args.scale, horizon_days=settings.horizon_days, progress=True)
    print(summary)
    return 0


def tuned_params(args: argparse.Namespace, settings: Settings, task: str) -> dict | None:
    """The record of the last ``funnelcast tune --task TASK`` (said on stdout), None with ``--default-params``."""
    from training.tune import load_tuned_params

    tuned = None if getattr(args, "default_params", False) else load_tuned_params(settings.home, task)
    if tuned:
        print(f"using tuned parameters of study {tuned['study']!r} trial {tuned['trial']} (--default-params to ignore)")
    return tuned


def reported_outcomes(args: argparse.Namespace, settings: Settings, task: str, cutoff: pd.Timestamp,
                      what: str = "outcome(s)") -> pd.DataFrame | None:
    """Outcomes the CRM reported for ``task`` up to ``cutoff``; None when none (or ``--no-outcomes``)."""
    if getattr(args, "no_outcomes", False):
        return None
    from training.outcomes import stored_outcomes

    outcomes = stored_outcomes(settings.resolved_store_url(), task, cutoff)
    if outcomes.empty:
        return None  # nothing reported yet: train on the export alone
    print(f"using {len(outcomes)} stored {what} up to {cutoff} (--no-outcomes to ignore)")
    return outcomes


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from training.train import TrainConfig, build_lead_model, log_and_register

    source, export = load_data(args, settings)
    cutoff = args.as_of or export.exported_at
    if export.exported_at is not None and cutoff > export.exported_at:
        print(f"note: --as-of {cutoff} is after the export's last timestamp {export.exported_at}", file=sys.stderr)
    cfg = TrainConfig(
        horizon_days=settings.horizon_days,
        snapshot_every_days=settings.snapshot_every_days,
        exclude=tuple(args.exclude or ()),
        seed=args.seed,
    )
    tuned = tuned_params(args, settings, "lead_quality")
    if tuned:
        cfg.params = dict(tuned["params"])
    outcomes = reported_outcomes(args, settings, "lead_quality", cutoff)
    result = build_lead_model(export, cfg, cutoff, progress=True, outcomes=outcomes)
    if result.outcome_labels is not None:
        o = result.outcome_labels
        print(f"labels decided by stored outcomes: {o.labels_from_outcomes}, changed from the export: {o.labels_changed}")
    result.scorer.metadata["params_source"] = f"tuned:{tuned['study']}#{tuned['trial']}" if tuned else "default"
    client = mlflow_client(settings)
    result = log_and_register(
        result,
        client,
        experiment=settings.experiment,
        artifact_location=settings.artifact_location(),
        cfg=cfg,
        data_source=source,
        alias=settings.model_alias,
    )
    rows = ["roc_auc", "pr_auc", "brier", "log_loss", "calibration_error", "top_decile_capture"]
    table = pd.DataFrame(
        {"funnelcast": [result.metrics[r] for r in rows], "naive Bayes": [result.baseline_metrics[r] for r in rows]},
        index=rows,
    )
    print(f"lead_quality trained on history before {cutoff}; evaluation window {result.plan.describe()['evaluate']}")
    print(table.round(4).to_string())
    print(f"registered lead_quality version {result.version} as {', '.join('@' + a for a in result.aliases)} "
          f"(run {result.run_id})")
    if settings.model_alias not in result.aliases:
        print("next: `funnelcast promote --task lead_quality` compares it with the champion")
    return 0


def cmd_score(args: argparse.Namespace, settings: Settings) -> int:
    from models.registry import load_scorer
    from training.score import score_open_leads

    _, export = load_data(args, settings)
    as_of = args.as_of or export.exported_at
    loaded = load_scorer(mlflow_client(settings), "lead_quality", settings.model_alias)
    out = score_open_leads(export, loaded.scorer, as_of)
    out["model_version"] = loaded.version
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out, index=False)
    print(f"scored {len(out)} leads open at {as_of} with lead_quality v{loaded.version} -> {args.out}")
    print(out.head(10)[["lead_id", "probability", "score", "grade", "expected_value", "reason_1"]].to_string(index=False))
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    # the app is named by string so that training never imports serving
    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers,
    )
    return 0


#: What `funnelcast run` trains after the lead model (each registers its champion).
FOLLOW_UP_TRAINING: list[list[str]] = [["train-accounts"], ["train-deals"]]


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """The main job on the embedded default: sample data if absent, train, register, serve."""
    if not (settings.sample_export / "leads.csv").exists() and not settings.data:
        gen = argparse.Namespace(out=str(settings.sample_dir), seed=args.seed, scale=args.scale)
        cmd_generate(gen, settings)
    train = argparse.Namespace(data=None, as_of=None, skip_bad_rows=False, exclude=None, seed=args.seed,
                               default_params=False)
    cmd_train(train, settings)
    # the other models the API and the managers' page serve, when their commands are installed
    for argv in FOLLOW_UP_TRAINING:
        print(f"funnelcast {' '.join(argv)}")
        follow = build_parser().parse_args(argv)
        follow.func(follow, settings)
    if args.no_serve:
        return 0
    print(f"serving on http://{settings.host}:{settings.port}  (OpenAPI docs at /docs)")
    return cmd_serve(argparse.Namespace(host=None, port=None, workers=1), settings)


def data_args(sp: argparse.ArgumentParser) -> None:
    """``--data`` and ``--skip-bad-rows``, shared by every command that reads an export."""
    sp.add_argument("--data", help="CRM export: a folder of CSV/Parquet files or a SQLAlchemy URL "
                    "(default: FUNNELCAST_DATA, else the generated sample)")
    sp.add_argument("--skip-bad-rows", action="store_true",
                    help="skip rows that break the data contract (reported per reason) instead of failing")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="funnelcast",
        description="ML lead scoring and sales forecasting from your CRM's history.",
        epilog="Settings come from FUNNELCAST_* environment variables (see README).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="write the sample CRM export and its truth files",
                       description="Generate a realistic sample B2B CRM export (deterministic by seed) "
                       "into OUT/export and the true probabilities into OUT/truth.")
    g.add_argument("--out", help="output folder (default: <home>/sample)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--scale", type=float, default=1.0, help="size multiplier (default 1.0)")
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("train", help="train, evaluate and register the lead-quality model",
                       description="Build point-in-time snapshots, train LightGBM on a time split, compare with "
                       "a naive-Bayes baseline, log everything to MLflow and register lead_quality@champion.")
    data_args(t)
    t.add_argument("--as-of", type=_timestamp, help="train on history before this time only (default: export time)")
    t.add_argument("--exclude", nargs="*", help="feature columns to leave out (e.g. leaking custom fields)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--default-params", action="store_true", help="ignore the parameters of `funnelcast tune`")
    t.add_argument("--no-outcomes", action="store_true",
                   help="ignore the outcomes reported through POST /v1/outcomes (default: they decide the labels "
                   "of the snapshots whose label window they fall in)")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("score", help="batch scoring", description="Score records with the registered champion.")
    ssub = s.add_subparsers(dest="what", required=True, metavar="WHAT")
    sl = ssub.add_parser("leads", help="score every lead open at --as-of",
                         description="Score every lead open at --as-of: probability, score, grade, expected value "
                         "and the top reasons as text, best first.")
    data_args(sl)
    sl.add_argument("--as-of", type=_timestamp, help="scoring time (default: export time)")
    sl.add_argument("--out", required=True, help="output CSV file")
    sl.set_defaults(func=cmd_score)

    v = sub.add_parser("serve", help="serve the scoring API", description="Serve the scoring API with uvicorn.")
    v.add_argument("--host", help="bind address (default FUNNELCAST_HOST or 127.0.0.1)")
    v.add_argument("--port", type=int, help="port (default FUNNELCAST_PORT or 8000)")
    v.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    v.set_defaults(func=cmd_serve)

    r = sub.add_parser("run", help="the main job: sample data if absent, train, register, serve",
                       description="Generate the sample CRM export if absent (or use FUNNELCAST_DATA), train and "
                       "register lead_quality@champion, then serve the API on 127.0.0.1:8000.")
    r.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    r.add_argument("--scale", type=float, default=1.0, help="sample size multiplier (default 1.0)")
    r.add_argument("--no-serve", action="store_true", help="stop after training")
    r.set_defaults(func=cmd_run)

    # further command groups register themselves here, one line each: module.register(sub, ssub)
    __import__("training.cli_adapters").cli_adapters.register(sub, ssub)
    __import__("training.cli_ops").cli_ops.register(sub, ssub)
    __import__("training.cli_accounts").cli_accounts.register(sub, ssub)
    __import__("training.cli_deals").cli_deals.register(sub, ssub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    try:
        return int(args.func(args, settings) or 0)
    except FunnelcastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

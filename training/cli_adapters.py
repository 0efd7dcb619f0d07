"""``funnelcast import`` (a foreign CRM export -> the data contract) and ``funnelcast audit`` (leakage)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from features.settings import Settings
from training.cli_common import as_of_arg, data_args, horizon, load_data


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from features.adapters import builtin_mappings, import_export, write_import

    if args.list:
        for name, path in builtin_mappings().items():
            print(f"{name:12s} {path}")
        return 0
    if not args.mapping or not args.inp or not args.out:
        print("error: --mapping, --in and --out are required (or --list)", file=sys.stderr)
        return 2
    result = import_export(args.mapping, args.inp, open_stages=settings.open_stages, skip_bad_rows=args.skip_bad_rows)
    out = write_import(result, args.out, fmt=args.format)
    for note in result.notes:
        print(f"note: {note}")
    if result.report:
        print(f"skipped invalid rows:\n{result.report.summary(limit=20)}", file=sys.stderr)
    rows = ", ".join(f"{t} {n}" for t, n in result.report.row_counts.items())
    print(f"imported {args.inp} with mapping {result.mapping} -> {out} ({rows})")
    if result.synthetic:
        print(f"synthetic timestamps: {', '.join(result.synthetic)} (see {out / 'IMPORT.json'})")
    print(f"next: funnelcast audit --data {out}")
    return 0


def _lead_horizon(export, as_of: pd.Timestamp | None) -> int:
    """lead_quality's horizon chosen from the data (as `funnelcast train` chooses it)."""
    from models.tasks import resolve_horizon
    from training.train import LEAD_QUALITY, TrainConfig

    return resolve_horizon(LEAD_QUALITY, export, as_of or export.exported_at, TrainConfig())[0].horizon_days


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from features.adapters import read_field_history, read_import_info
    from training.audit import AuditThresholds, audit_leads, write_exclude

    source, export = load_data(args, settings)
    info = read_import_info(source)
    history = read_field_history(source)
    thresholds = AuditThresholds(auc=args.auc, fill_gap=args.fill_gap, after_share=args.after_share)
    report = audit_leads(
        export,
        cutoff=args.as_of,
        horizon_days=args.horizon or settings.horizon_days or _lead_horizon(export, args.as_of),
        snapshot_every_days=settings.snapshot_every_days,
        thresholds=thresholds,
        field_history=history,
        synthetic=info.get("synthetic_timestamps", []),
        progress=True,
    )
    table = report.table()
    shown = table if args.all else table[table["stored"] | (table["suspect"] != "")]
    with pd.option_context("display.width", 200, "display.max_colwidth", 90):
        print(shown.drop(columns=["stored"]).round(3).to_string(index=False))
    print(f"split ({report.split['order']}): earlier {report.split['earlier']}, later {report.split['later']}")
    for note in report.notes:
        print(f"note: {note}")
    if report.suspects:
        print(f"\n{len(report.suspects)} suspect(s): {' '.join(report.suspects)}")
        print(f"train without them: funnelcast train --data {source} --exclude {' '.join(report.suspects)}")
    else:
        print("\nno suspect found")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report.to_json())
        print(f"report -> {args.out}")
    if args.write_exclude:
        write_exclude(report, args.write_exclude)
        print(f"suspects -> {args.write_exclude} (funnelcast train --exclude $(cat {args.write_exclude}))")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``import`` and ``audit`` to the ``funnelcast`` command."""
    i = sub.add_parser(
        "import",
        help="turn a Salesforce/HubSpot/spreadsheet export into the data contract",
        description="Apply a YAML mapping (built-in name or file) to a folder of CSV files and write a "
        "data-contract export (plus IMPORT.json: synthetic timestamps, notes, skipped rows). Bad source "
        "rows are reported with file, row and column.",
    )
    i.add_argument("--mapping", help="built-in mapping name (see --list) or a YAML file")
    i.add_argument("--in", dest="inp", help="folder holding the source export's CSV files")
    i.add_argument("--out", help="output folder for the data-contract export")
    i.add_argument("--format", choices=("csv", "parquet"), default="csv", help="output file format (default csv)")
    i.add_argument("--skip-bad-rows", action="store_true",
                   help="drop rows that break the contract (counted per reason) instead of failing")
    i.add_argument("--list", action="store_true", help="list the built-in mappings and exit")
    i.set_defaults(func=cmd_import)

    a = sub.add_parser(
        "audit",
        help="flag fields that leak the outcome",
        description="Leakage audit of the lead model's features: single-feature AUC on a time split, fill "
        "rate among converted vs other leads, and values set after the outcome where timestamps exist. "
        "Suspects can be left out of training with `funnelcast train --exclude`.",
    )
    data_args(a)
    as_of_arg(a, "audit history before this time")
    a.add_argument("--horizon", type=horizon, help="label horizon, e.g. 91d (default FUNNELCAST_HORIZON_DAYS)")
    a.add_argument("--auc", type=float, default=0.80, help="flag a stored field whose AUC alone reaches this (0.80)")
    a.add_argument("--fill-gap", type=float, default=0.25,
                   help="flag a field whose fill rate differs by this much between converted and other leads (0.25)")
    a.add_argument("--after-share", type=float, default=0.05,
                   help="flag a field set after the outcome for this share of decided leads (0.05)")
    a.add_argument("--all", action="store_true", help="also show the computed point-in-time features")
    a.add_argument("--out", help="write the full report to this JSON file")
    a.add_argument("--write-exclude", help="write the suspects to this file, one per line")
    a.set_defaults(func=cmd_audit)

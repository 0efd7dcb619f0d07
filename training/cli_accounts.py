"""Commands on accounts and reps: ``traits`` (high-value customer traits) and ``allocate`` (leads to reps)."""

from __future__ import annotations

import argparse
from pathlib import Path

from features.settings import Settings
from models.tasks import Task
from training.cli_common import as_of_arg, data_args, horizon, load_data, mlflow_client, tuned_params
from training.score import readable

__all__ = ["register"]


def _readable_traits(result, out: Path, cutoff) -> None:
    """traits.csv and importance.csv for people: the cutoff, rounded numbers, features by their plain labels."""
    from models.explain import feature_label

    readable(result.traits, cutoff).to_csv(out / "traits.csv", index=False)
    imp = result.importance
    if "feature" in imp.columns:
        imp = imp.assign(label=imp["feature"].map(feature_label))
        imp.insert(1, "label", imp.pop("label"))
    readable(imp, cutoff).to_csv(out / "importance.csv", index=False)


def cmd_traits(args: argparse.Namespace, settings: Settings) -> int:
    from training.accounts import AccountConfig, build_high_value_model, write_traits_report
    from training.pipeline import log_and_register

    source, export = load_data(args, settings)
    cutoff = args.as_of or export.exported_at
    cfg = AccountConfig(window_days=args.horizon, quantile=args.quantile, n_bootstrap=args.bootstrap, seed=args.seed)
    tuned = tuned_params(settings, Task.HIGH_VALUE.value, args.default_params) if args.register else None
    if tuned:
        cfg.params = dict(tuned["params"])
    result = build_high_value_model(export, cfg, cutoff, progress=True)
    result.scorer.metadata["params_source"] = f"tuned:{tuned['study']}#{tuned['trial']}" if tuned else "default"
    paths = write_traits_report(result, Path(args.out))
    _readable_traits(result, Path(args.out), cutoff)
    print(f"{len(result.snapshots):,} customers with a complete {cfg.window_days}-day value before {cutoff.date()}; "
          f"high value = at least {result.scorer.threshold:,.0f} (top {1 - cfg.quantile:.0%})")
    cols = ["rank", "trait", "accounts", "share", "lift", "heldout_lift", "heldout_low", "heldout_high", "stability"]
    if len(result.traits):
        print(result.traits[cols].round(2).to_string(index=False))
    else:
        print("no trait beats the base with confidence")
    print("global SHAP importance (P(high value)):")
    print(result.importance.head(8)[["feature", "importance", "direction"]].round(4).to_string(index=False))
    print("wrote " + ", ".join(str(p) for p in paths))
    if args.register:
        result = log_and_register(result, mlflow_client(settings, create=True), experiment=settings.experiment,
                                  artifact_location=settings.artifact_location(), cfg=cfg, data_source=source,
                                  alias=settings.model_alias)
        print(f"registered high_value version {result.version} as {', '.join('@' + a for a in result.aliases)} "
              f"(run {result.run_id})")
    return 0


def cmd_allocate(args: argparse.Namespace, settings: Settings) -> int:
    from features.pit import open_leads
    from models.allocation import allocate, lead_items, own_by_score, reps_from_export, round_robin
    from models.registry import load_scorer

    _, export = load_data(args, settings)
    as_of = args.as_of or export.exported_at
    loaded = load_scorer(mlflow_client(settings), Task.LEAD_QUALITY.value, settings.model_alias)
    scorer = loaded.scorer
    leads = open_leads(export.leads, as_of)
    scored = scorer.score(leads, export.accounts, export.activities, as_of, n_reasons=1)
    reps = reps_from_export(export.reps, scorer.context.owner_rate, scorer.context.global_rate, args.default_capacity)
    items = lead_items(scored, leads)
    result = allocate(reps, items)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table = result.assignments.rename(columns={"item_id": "lead_id"}) if (result.assignments["kind"] == "lead").all() \
        else result.assignments
    readable(table, as_of, f"lead_quality@{loaded.version}", export).to_csv(args.out, index=False)
    rr, own = round_robin(reps, items, seed=args.seed), own_by_score(reps, items)
    print(f"{len(items):,} open leads at {as_of}, {len(reps)} reps, capacity {int(reps['capacity'].sum()):,} per week")
    print(f"assigned {len(result.assignments):,}; expected value {result.total_value:,.0f} "
          f"(round robin {rr.total_value:,.0f}, own leads by score {own.total_value:,.0f}) -> {args.out}")
    print(result.assignments.groupby("owner_id").head(1)[["owner_id", "item_id", "value", "why"]].to_string(index=False))
    return 0


def _parser(sub: argparse._SubParsersAction, name: str, help: str, description: str,
            as_of_help: str) -> argparse.ArgumentParser:
    """A command reading an export as of a time: ``--data``, ``--skip-bad-rows`` and ``--as-of``."""
    p = sub.add_parser(name, help=help, description=description)
    data_args(p)
    as_of_arg(p, as_of_help)
    return p


def register(sub: argparse._SubParsersAction) -> None:
    t = _parser(sub, "traits", "mine high-value customer traits (table and plots)",
                "Compute customer value per account, mine high-value traits (1-3 conditions with support, lift, "
                "held-out CI and bootstrap stability) and global SHAP importance; write traits.csv, traits.json, "
                "importance.csv, traits.png and shap_summary.png to OUT.", "use history before this time only")
    t.add_argument("--horizon", type=horizon, default=365,
                   help="customer value window after the first win, e.g. 365d or 52w (default 365d)")
    t.add_argument("--quantile", type=float, default=0.8, help="high value = at least this quantile of value (default 0.8)")
    t.add_argument("--bootstrap", type=int, default=50, help="bootstrap resamples for trait stability (default 50)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--out", required=True, help="output folder (several files)")
    t.add_argument("--register", action="store_true", help="also register the high_value model with its traits "
                   "(as @challenger; the first version also @champion); `funnelcast train --task high_value` "
                   "does the same with the default settings")
    t.add_argument("--default-params", action="store_true",
                   help="with --register: ignore the parameters of `funnelcast tune --task high_value`")
    t.set_defaults(func=cmd_traits)

    a = _parser(sub, "allocate", "assign open leads to reps (exact, within capacity)",
                "Score every lead open at --as-of with lead_quality@champion and assign them to the export's reps "
                "to maximise total expected value within weekly capacity (exact assignment); writes each rep's "
                "ordered worklist with why each item is there.", "allocation time")
    a.add_argument("--out", required=True, help="output CSV file")
    a.add_argument("--default-capacity", type=int, default=40, help="capacity of a rep without one (default 40)")
    a.add_argument("--seed", type=int, default=0, help="seed of the round-robin comparison (default 0)")
    a.set_defaults(func=cmd_allocate)

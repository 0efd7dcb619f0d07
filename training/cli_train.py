"""The main commands: ``generate``, ``train [--task TASK ...]``, ``score --task TASK``, ``run``.

Each command is a function with real arguments (``generate``, ``train_tasks``, ``score_task``,
``serve``); its ``cmd_*`` wrapper only reads the parsed flags, so ``run`` calls the same
functions directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from features.contract import Export
from features.errors import FunnelcastError
from features.engine import add_engine_args, engine_from, engine_session
from features.settings import Settings
from models.registry import record_not_trained
from models.tasks import Task
from training.cli_common import (as_of_arg, data_args, horizon, load_data, load_export_from, mlflow_client,
                                 run_plugin_command, tuned_params)
from training.pipeline import log_and_register, result_floor, train
from training.tasks import TASKS, task_definition

__all__ = ["generate", "register", "score_task", "task_config", "train_tasks"]

TASK_NAMES = [t.value for t in TASKS]

#: What ``train --refit`` sets, as overrides of the task configs (each task takes the fields it has):
#: ``choose`` tries lead_quality's refit on the calibration window (``choose_refit``) and leaves
#: stage_conversion's timing refit to the per-fit choice (``refit_timing`` None); ``off``, the defaults.
REFIT_OVERRIDES: dict[str, dict[str, Any]] = {"off": {}, "choose": {"choose_refit": True, "refit_timing": None}}


class NothingTrained(FunnelcastError):
    """``run``: no task could be trained on the export (each one's reason in the message)."""

    def __init__(self, why: str):
        super().__init__(f"no task could be trained on this export: {why}")


def generate(out: Path, seed: int, scale: float, settings: Settings) -> None:
    from features.sample import generate_sample

    kwargs = {"horizon_days": settings.horizon_days} if settings.horizon_days else {}  # else the generator's
    print(generate_sample(out, seed=seed, scale=scale, progress=True, **kwargs))


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    generate(Path(args.out or settings.sample_dir), args.seed, args.scale, settings)
    return 0


def _stored_outcomes(settings: Settings, task: Task, cutoff: pd.Timestamp) -> pd.DataFrame | None:
    """Outcomes the CRM reported for ``task`` up to ``cutoff`` (said on stdout); None when there are none."""
    from training.outcomes import stored_outcomes

    outcomes = stored_outcomes(settings.resolved_store_url(), task.value, cutoff)
    if outcomes.empty:
        return None  # nothing reported yet: train on the export alone
    print(f"{task}: using {len(outcomes)} stored outcome(s) up to {cutoff} (--no-outcomes to ignore)")
    return outcomes


def task_config(task: Task, settings: Settings, *, horizon_days: int | None, snapshot_every_days: int | None, seed: int,
            exclude: Sequence[str], overrides: dict[str, Any], default_params: bool) -> tuple[Any, str]:
    """The task's config from the shared flags, ``overrides`` of the fields it has, and the tuned parameters
    (a horizon of None is chosen from the data when the task trains)."""
    cfg = task_definition(task).config(horizon_days=horizon_days or settings.horizon_days,
                                       snapshot_every_days=snapshot_every_days or settings.snapshot_every_days,
                                       seed=seed, exclude=tuple(exclude))
    names = {f.name for f in dataclasses.fields(cfg)}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if k in names})
    tuned = tuned_params(settings, task.value, default_params)
    if tuned:
        cfg.params = dict(tuned["params"])
    return cfg, (f"tuned:{tuned['study']}#{tuned['trial']}" if tuned else "default")


def _chosen_text(chosen: dict[str, object]) -> str:
    """The windows and choices of a training run, as `funnelcast train` prints them."""
    if not chosen:
        return "trained with its own windows"
    parts = []
    if "horizon_days" in chosen:
        source = "from the data" if chosen.get("horizon_source") == "data" else "set by the user"
        parts.append(f"horizon {chosen['horizon_days']}d ({source})")
    if "evaluate_days" in chosen:
        parts.append(f"evaluation window {chosen['evaluate_days']}d, calibration window {chosen['calibrate_days']}d")
    if "candidate" in chosen:
        parts.append(f"model {chosen['candidate']} chosen on {chosen.get('chosen_on', 'the validation window')} (history "
                     f"{chosen.get('history_days', 'all')}, half-life {chosen.get('half_life_days', 'none')}"
                     f"{_refit_text(chosen)})")
    if chosen.get("age_limit"):  # lead_quality: leads older than the model's range (models.lifetime)
        parts.append(str(chosen["age_limit"]))
    if chosen.get("baseline_name"):  # the tasks whose floor compares with one named baseline
        parts.append(f"best baseline on the evaluation window: {chosen['baseline_name']}")
    return "; ".join(parts)


def _refit_text(chosen: dict[str, object]) -> str:
    """Whether the chosen model was refitted on the calibration window and, when the refit was tried
    (``train --refit choose``), the validation figures that decided it; nothing when it was not tried."""
    kept, note = chosen.get("refit_on_calibration") == "yes", chosen.get("refit_note")
    if note:
        return f", refit on the calibration window {'kept' if kept else 'not kept'}: {note}"
    return ", refitted on the calibration window too" if kept else ""


def train_tasks(tasks: Sequence[Task], settings: Settings, *, source: str | None = None, skip_bad_rows: bool = False,
                as_of: pd.Timestamp | None = None, horizon_days: int | None = None,
                snapshot_every_days: int | None = None, seed: int = 0, exclude: Sequence[str] = (),
                overrides: dict[str, Any] | None = None, default_params: bool = False,
                use_outcomes: bool = True, force: bool = False,
                skipped: list[tuple[Task, str]] | None = None) -> list[Any]:
    """Train, evaluate, log and register each of ``tasks`` on the export at ``source``; the results.

    ``skipped``: when given, a task the data cannot train (a ``FunnelcastError``: too little history, too few
    customers) is reported on stderr and appended there as (task, why: the error, naming the task), and the
    other tasks still train; without it, the error stops the command (one task asked for)."""
    source, export = load_export_from(source, settings, skip_bad_rows)
    cutoff = as_of or export.exported_at
    if export.exported_at is not None and cutoff > export.exported_at:
        print(f"note: --as-of {cutoff} is after the export's last timestamp {export.exported_at}", file=sys.stderr)
    client = mlflow_client(settings, create=True)
    results = []
    for task in tasks:
        cfg, params_source = task_config(task, settings, horizon_days=horizon_days, snapshot_every_days=snapshot_every_days,
                                     seed=seed, exclude=exclude, overrides=overrides or {},
                                     default_params=default_params)
        outcomes = _stored_outcomes(settings, task, cutoff) if use_outcomes else None
        try:
            result = train(task, export, cutoff, cfg, progress=True, outcomes=outcomes)
        except FunnelcastError as exc:
            why = str(exc) if str(exc).startswith(str(task)) else f"{task}: {exc}"  # the task named once
            record_not_trained(client, task.value, why, source)  # the API says why, not "run train"
            if skipped is None:
                raise
            print(f"error: {why}; {task} not trained, the other tasks go on", file=sys.stderr)
            skipped.append((task, why))
            continue
        cfg = result.config if result.config is not None else cfg  # its horizon resolved
        result.scorer.metadata["params_source"] = params_source
        print(f"{task}: {_chosen_text(result.chosen)}")
        for warning in result.warnings:
            print(f"warning: {task}: {warning}")
        if result.outcome_labels is not None:
            o = result.outcome_labels
            print(f"labels decided by stored outcomes: {o.labels_from_outcomes}, changed from the export: "
                  f"{o.labels_changed}")
        result = log_and_register(result, client, experiment=settings.experiment,
                                  artifact_location=settings.artifact_location(), cfg=cfg, data_source=source,
                                  alias=settings.model_alias, force=force)
        print(f"{task} trained on history before {cutoff}; {task_definition(task).summary(result)}")
        print(f"registered {task} version {result.version} as {', '.join('@' + a for a in result.aliases)} "
              f"(run {result.run_id})")
        fl = result_floor(result)
        if not fl.passed:
            print(f"baseline floor: {fl.describe()}: "
                  + ("registered as champion anyway (--force)" if force else
                     f"not made @{settings.model_alias}; `funnelcast promote --task {task} --force` makes it champion"))
        elif settings.model_alias not in result.aliases:
            print(f"next: `funnelcast promote --task {task}` compares it with the champion")
        results.append(result)
    return results


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    overrides = {"timing_layout": args.timing_layout} if args.timing_layout else {}
    overrides |= REFIT_OVERRIDES[args.refit]
    tasks = [Task(t) for t in (args.task or TASK_NAMES)]
    skipped: list[tuple[Task, str]] = []
    with engine_session(engine_from(args, settings, announce=True)):  # --engine dask: a cluster for the command
        results = train_tasks(tasks, settings, source=args.data,
                              skip_bad_rows=args.skip_bad_rows, as_of=args.as_of, horizon_days=args.horizon,
                              snapshot_every_days=args.snapshot_every, seed=args.seed, exclude=args.exclude or (),
                              overrides=overrides, default_params=args.default_params,
                              use_outcomes=not args.no_outcomes, force=args.force,
                              skipped=skipped if len(tasks) > 1 else None)
    if skipped:
        print(_skipped_text(results, skipped), file=sys.stderr)
        return 2
    return 0


def _skipped_text(results: Sequence[Any], skipped: Sequence[tuple[Task, str]]) -> str:
    """The closing lines of a training run in which some tasks could not be trained."""
    trained = ", ".join(str(r.scorer.task) for r in results) or "none"
    lines = [f"trained: {trained}; not trained: {', '.join(str(t) for t, _ in skipped)}"]
    lines += [f"  {why}" for _, why in skipped]
    return "\n".join(lines)


def score_task(task: Task, export: Export, settings: Settings, as_of: pd.Timestamp | None, out: Path) -> pd.DataFrame:
    """Score every entity of ``task`` open at ``as_of`` with its registered champion into the CSV ``out``."""
    from models.registry import load_scorer
    from training.score import readable

    loaded = load_scorer(mlflow_client(settings), task.value, settings.model_alias)
    as_of = as_of or export.exported_at
    scored = task_definition(task).score(loaded.scorer, export, as_of)
    table = readable(scored.table, as_of, f"{task}@{loaded.version}", export)  # names, owner, as_of, model, rounded
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    print(f"scored {len(table)} {scored.entity} open at {as_of} with {task} v{loaded.version} -> {out}")
    print(table.head(10).drop(columns=["as_of", "model"]).round(3).to_string(index=False))
    return table


def cmd_score(args: argparse.Namespace, settings: Settings) -> int:
    _, export = load_data(args, settings)
    with engine_session(engine_from(args, settings, announce=True)):
        score_task(Task(args.task), export, settings, args.as_of, Path(args.out))
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """The main job: sample data if no export is given, train every task, make them champions, serve.

    With ``--data`` (or FUNNELCAST_DATA) the models are trained on that export, and a champion
    trained on another source (the sample of a first ``run``) is replaced by the new version; a
    champion trained on the same source is only replaced through the promotion gate. The API then
    serves these champions and reads the same export."""
    import os

    from features.settings import get_settings
    from training.retrain import champion_of, promote_trained

    source = args.data or settings.data
    if source is None and not (settings.sample_export / "leads.csv").exists():
        generate(Path(settings.sample_dir), args.seed, args.scale, settings)
    if source is not None and Path(source).exists():
        source = str(Path(source).resolve())  # the API reads it from its own working folder
    source, export = load_export_from(source, settings, args.skip_bad_rows)
    client = mlflow_client(settings, create=True)
    before = {t: champion_of(client, t.value, settings.model_alias) for t in TASKS}
    skipped: list[tuple[Task, str]] = []
    results = train_tasks(list(TASKS), settings, source=source, skip_bad_rows=args.skip_bad_rows, seed=args.seed,
                          skipped=skipped)
    for result in results:
        v, v_source = before[Task(result.scorer.task)]
        row = promote_trained(result, export, client, settings, before=v, before_source=v_source, source=source,
                              replace_other_source=True)
        print(f"{row.task}: @{settings.model_alias} v{row.champion_after} ({row.reason})")
    if skipped:
        print(_skipped_text(results, skipped), file=sys.stderr)
        if not results:
            raise NothingTrained("; ".join(why for _, why in skipped))
        print("the API serves the trained tasks; the others answer 503 until they are trained", file=sys.stderr)
    if args.no_serve:
        return 0
    if args.data:
        os.environ["FUNNELCAST_DATA"] = source  # the API's worker processes read their settings from the environment
        get_settings.cache_clear()
    return run_plugin_command(["serve"], settings)


def _train_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train", help="train, evaluate and register models (every task unless --task)",
        description="For each task: build point-in-time snapshots, fit on a time fold, evaluate on the latest "
        "window against the task's baseline, log to MLflow and register the model (its first version becomes "
        "@champion, later ones @challenger for `funnelcast promote`). Tasks: lead_quality (P(a lead converts "
        "within the horizon), baseline naive Bayes), stage_conversion (P(next stage), P(won) and when per open "
        "deal, baseline the CRM's stage win rate), high_value (P(an account becomes a high-value customer) and "
        "its value, with traits; baseline the first deal's amount). Uses the parameters of the last "
        "`funnelcast tune --task TASK` and the outcomes stored through POST /v1/outcomes.")
    t.add_argument("--task", nargs="+", choices=TASK_NAMES, metavar="TASK",
                   help=f"the tasks to train: {', '.join(TASK_NAMES)} (default: all, in this order)")
    data_args(t)
    as_of_arg(t, "train on history before this time only")
    t.add_argument("--horizon", type=horizon, help="label horizon of lead_quality and stage_conversion, e.g. 91d "
                   "(default FUNNELCAST_HORIZON_DAYS, else chosen from the data: 90%% of the decisions, rounded up)")
    t.add_argument("--snapshot-every", type=horizon, help="time between snapshots, e.g. 14d (default 14d)")
    t.add_argument("--exclude", nargs="*", help="feature columns to leave out (e.g. leaking custom fields)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--timing-layout", choices=("competing_risks", "close_share"),
                   help="stage_conversion's timing model: separate win and loss hazards, or a close hazard times "
                   "P(won | closes) (default: chosen per fit on a validation window)")
    t.add_argument("--refit", choices=tuple(REFIT_OVERRIDES), default="off",
                   help="choose: for lead_quality and stage_conversion (its timing models), try refitting the "
                   "chosen model on the most recent decided window (the calibration window) too, and keep the "
                   "refit only when it beats the model as calibrated on the validation window; off (the default): "
                   "no refit, since on the benchmark samples it did not pay on average (docs/benchmarks.md)")
    t.add_argument("--default-params", action="store_true", help="ignore the parameters of `funnelcast tune`")
    t.add_argument("--force", action="store_true", help="make a first version champion even when it is below the "
                   "best simple baseline on the evaluation window (the baseline floor)")
    t.add_argument("--no-outcomes", action="store_true",
                   help="ignore the outcomes reported through POST /v1/outcomes (default: they decide the labels "
                   "of the snapshots whose label window they fall in)")
    add_engine_args(t)
    t.set_defaults(func=cmd_train)


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="write the sample CRM export and its truth files",
                       description="Generate a realistic sample B2B CRM export (deterministic by seed) "
                       "into OUT/export and the true probabilities into OUT/truth.")
    g.add_argument("--out", help="output folder (default: <home>/sample)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--scale", type=float, default=1.0, help="size multiplier (default 1.0)")
    g.set_defaults(func=cmd_generate)

    _train_parser(sub)

    s = sub.add_parser("score", help="batch scoring of every lead, deal or account open at --as-of",
                       description="Score every entity of a task open at --as-of with its registered champion, best "
                       "first: lead_quality (probability, score, grade, expected value), stage_conversion (p_win, "
                       "p_win_within_horizon, p_next_stage, expected close date and value), high_value "
                       "(probability, expected customer value); the top reasons as text.")
    s.add_argument("--task", required=True, choices=TASK_NAMES, help="which model scores")
    data_args(s)
    as_of_arg(s, "scoring time")
    s.add_argument("--out", required=True, help="output CSV file")
    add_engine_args(s)
    s.set_defaults(func=cmd_score)

    r = sub.add_parser("run", help="the main job: sample data if absent, train every task, register, serve",
                       description="Train and register " + ", ".join(TASK_NAMES) + " on --data (else "
                       "FUNNELCAST_DATA, else the sample, generated if absent), make them @champion (replacing a "
                       "champion trained on another source; one of the same source only through the promotion "
                       "gate), then serve the API on 127.0.0.1:8000 on that data.")
    data_args(r)
    r.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    r.add_argument("--scale", type=float, default=1.0, help="sample size multiplier (default 1.0)")
    r.add_argument("--no-serve", action="store_true", help="stop after training")
    r.set_defaults(func=cmd_run)


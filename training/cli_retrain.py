"""``funnelcast retrain``: the retraining loop, cron-able (see :mod:`training.retrain`).

Train every task (or ``--task``) on the configured export, put each new version through the
promotion gate (the comparison of ``funnelcast promote``) and print one table per run: the
champion before, the new version, AUC and Brier on the comparison window, and whether
``@champion`` moved and why. Exit status 0 when nothing is promoted, 1 when a task failed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

from features.settings import Settings
from models.tasks import Task
from training.cli_common import as_of_arg, data_args, load_export_from, mlflow_client
from training.retrain import retrain, retrain_table
from training.tasks import TASKS

__all__ = ["register"]


def cmd_retrain(args: argparse.Namespace, settings: Settings, train: Callable[..., list[Any]]) -> int:
    source, export = load_export_from(args.data, settings, args.skip_bad_rows)
    rows = retrain([Task(t) for t in (args.task or [t.value for t in TASKS])], train, export, source,
                   mlflow_client(settings, create=True), settings, skip_bad_rows=args.skip_bad_rows,
                   as_of=args.as_of, seed=args.seed, evaluate=args.evaluate, use_outcomes=not args.no_outcomes)
    print(retrain_table(rows).to_string(index=False))
    for r in rows:
        print(f"{r.task}: {'PROMOTED' if r.promoted else 'kept' if not r.failed else 'FAILED'}: {r.reason}")
    if any(r.promoted for r in rows):
        print(f"running APIs pick the new @{settings.model_alias} up with their alias poll "
              "(FUNNELCAST_RELOAD_POLL_SECONDS) or POST /v1/admin/reload")
    return 1 if any(r.failed for r in rows) else 0


def register(sub: argparse._SubParsersAction, train: Callable[..., list[Any]]) -> None:
    """Add ``retrain``; ``train`` is the CLI's training path (``training.cli_train.train_tasks``)."""
    names = [t.value for t in TASKS]
    r = sub.add_parser("retrain", help="train every task and promote each new version through the gate",
                       description="The retraining loop (cron-able): train every task (or --task) on the configured "
                       "export (--data, else FUNNELCAST_DATA, else the sample), then compare each new version with "
                       "@champion exactly as `funnelcast promote` does and move @champion only when it wins. Prints "
                       "a table per task (champion before, new version, AUC and Brier on the comparison window, "
                       "promoted or why not). Exit status 0 when nothing is promoted; 1 when a task failed.")
    r.add_argument("--task", nargs="+", choices=names, metavar="TASK", help=f"tasks: {', '.join(names)} (default all)")
    data_args(r)
    as_of_arg(r, "train on history before this time only")
    r.add_argument("--evaluate", default="91d", help="length of the comparison window, e.g. 13w (default 91d)")
    r.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    r.add_argument("--no-outcomes", action="store_true", help="ignore the outcomes reported through POST /v1/outcomes")
    r.set_defaults(func=partial(cmd_retrain, train=train))

"""What every ``funnelcast`` command shares: argument types, common flags, loading the export, MLflow.

It imports none of the command modules (``training.cli`` imports them and this module).
The same flag means the same thing in every command: ``--data`` (the export), ``--as-of``
(the cutoff), ``--horizon 91d`` (a duration in days or weeks), ``--by`` (the grouping),
``--out`` (a file for one table; a folder only where a command writes several files).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pandas as pd

from features.contract import Export
from features.settings import Settings
from models.folds import InvalidFold, parse_duration

__all__ = ["GROUPINGS", "announce", "as_of_arg", "by_arg", "data_args", "grouping", "horizon", "load_data", "load_export_from",
           "mlflow_client", "plugin_commands", "run_plugin_command", "timestamp", "tuned_params"]

#: The entry-point group through which other packages add commands (serving adds ``serve``).
COMMANDS_GROUP = "funnelcast.commands"

#: The groupings of forecasts, funnels and backtests (``owner`` is short for ``owner_id``).
GROUPINGS = ("owner_id", "owner", "team", "industry", "product", "none")


def timestamp(value: str) -> pd.Timestamp:
    """An ISO 8601 timestamp argument, in UTC."""
    from features.pit import utc

    try:
        return utc(value)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 timestamp: {value!r}") from exc


def horizon(value: str) -> int:
    """A duration argument such as ``91d`` or ``13w`` (a bare number is days), in whole days > 0."""
    try:
        days = int(parse_duration(value if value.strip()[-1:] in "dw" else f"{value.strip()}d") / pd.Timedelta(days=1))
    except InvalidFold as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if days <= 0:
        raise argparse.ArgumentTypeError(f"not a positive duration: {value!r} (e.g. 91d or 13w)")
    return days


def grouping(value: str) -> str:
    """``--by``: a column of :data:`GROUPINGS` (``owner`` means ``owner_id``)."""
    return {"owner": "owner_id"}.get(value, value)


def data_args(sp: argparse.ArgumentParser) -> None:
    """``--data`` and ``--skip-bad-rows``, shared by every command that reads an export."""
    sp.add_argument("--data", help="CRM export: a folder of CSV/Parquet files or a SQLAlchemy URL "
                    "(default: FUNNELCAST_DATA, else the generated sample)")
    sp.add_argument("--skip-bad-rows", action="store_true",
                    help="skip rows that break the data contract (reported per reason) instead of failing")


def as_of_arg(sp: argparse.ArgumentParser, what: str) -> None:
    """``--as-of``: the cutoff; only history before it is read."""
    sp.add_argument("--as-of", type=timestamp, help=f"{what} (ISO 8601; default: the export's last timestamp)")


def by_arg(sp: argparse.ArgumentParser, default: str) -> None:
    sp.add_argument("--by", default=default, choices=GROUPINGS, help=f"grouping (default {default}; none: the total)")


def announce(args: argparse.Namespace, settings: Settings) -> None:
    """Say, in one line on stderr, which project home, MLflow store and data source the command uses."""
    print(settings.where(getattr(args, "data", None)), file=sys.stderr)


def load_export_from(source: str | None, settings: Settings, skip_bad_rows: bool = False) -> tuple[str, Export]:
    """The export at ``source`` (or settings, or the sample), loaded and validated; bad rows reported."""
    from features.io import load_export

    source = source or settings.data or str(settings.sample_export)
    export, report = load_export(source, open_stages=settings.open_stages, skip_bad_rows=skip_bad_rows)
    if report:
        print(f"skipped invalid rows in {source}:\n{report.summary()}", file=sys.stderr)
    return source, export


def load_data(args: argparse.Namespace, settings: Settings) -> tuple[str, Export]:
    """The export named by the command's ``--data`` and ``--skip-bad-rows``."""
    return load_export_from(args.data, settings, args.skip_bad_rows)


def mlflow_client(settings: Settings, create: bool = False) -> Any:
    """An MLflow client on the configured tracking/registry store (SQLite under home by default).

    Commands that only read models (score, promote, drift, ...) leave ``create`` False: a missing
    SQLite store is then refused (:class:`~features.settings.StoreNotFound`, naming where it was
    looked for) instead of MLflow silently creating an empty one. ``train``, ``run``, ``tune`` and
    ``backtest`` create it."""
    from models.registry import configure

    if create:
        settings.home.mkdir(parents=True, exist_ok=True)
    else:
        settings.require_tracking_store()
    return configure(settings.resolved_tracking_uri(), home=settings.home)


def tuned_params(settings: Settings, task: str, default_params: bool = False) -> dict | None:
    """The record of the last ``funnelcast tune --task TASK`` (said on stdout), None with ``default_params``."""
    from training.tune import load_tuned_params

    tuned = None if default_params else load_tuned_params(settings.home, task)
    if tuned:
        print(f"using tuned parameters of study {tuned['study']!r} trial {tuned['trial']} (--default-params to ignore)")
    return tuned


def plugin_commands(sub: argparse._SubParsersAction) -> list[str]:
    """Add the commands other installed packages contribute (entry points of ``COMMANDS_GROUP``,
    each a ``register(sub)``); returns their names. Serving adds ``serve`` this way, so the CLI
    reaches it without training importing serving."""
    from importlib.metadata import entry_points

    found = sorted(entry_points(group=COMMANDS_GROUP), key=lambda ep: ep.name)
    for ep in found:
        ep.load()(sub)
    return [ep.name for ep in found]


def run_plugin_command(argv: list[str], settings: Settings) -> int:
    """Run a contributed command (``["serve"]``) as if typed after ``funnelcast``."""
    from features.errors import FunnelcastError

    parser = argparse.ArgumentParser(prog="funnelcast")
    names = plugin_commands(parser.add_subparsers(dest="command", required=True))
    if argv[0] not in names:
        raise FunnelcastError(f"the {argv[0]!r} command is not installed (found: {', '.join(names) or 'none'}); "
                              "install funnelcast with `pip install -e .` in its folder")
    args = parser.parse_args(argv)
    return int(args.func(args, settings) or 0)

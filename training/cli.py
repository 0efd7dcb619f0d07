"""The ``funnelcast`` command: one verb per job, ``--help`` on each.

The parser is built from the command modules, imported explicitly; what they share is in
``training.cli_common``, which imports none of them.
"""

from __future__ import annotations

import argparse
import sys

from features.errors import FunnelcastError
from features.settings import get_settings
from models.estimators import set_train_threads
from training import cli_accounts, cli_adapters, cli_deals, cli_ops, cli_retrain, cli_train
from training.cli_common import announce, plugin_commands

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="funnelcast",
        description="ML lead scoring and sales forecasting from your CRM's history.",
        epilog="Settings come from FUNNELCAST_* environment variables (see README).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli_train.register(sub)  # generate, train, score, run
    cli_deals.register(sub)  # forecast, funnel, backtest
    cli_accounts.register(sub)  # traits, allocate
    cli_ops.register(sub)  # tune, promote, drift
    cli_retrain.register(sub, train=cli_train.train_tasks)  # retrain (trains through train's one path)
    cli_adapters.register(sub)  # import, audit
    plugin_commands(sub)  # serve, from serving (an entry point: training does not import serving)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
        set_train_threads(settings.train_threads)
        announce(args, settings)
        return int(args.func(args, settings) or 0)
    except FunnelcastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

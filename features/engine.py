"""The compute engine: pandas in this process, or Dask on a cluster, for the same feature code.

``--engine pandas`` (the default) runs everything in the command's process. ``--engine dask``
opens a :class:`distributed.Client` for the command (:func:`engine_session`): to the scheduler at
``--scheduler ADDRESS`` (``FUNNELCAST_DASK_SCHEDULER``), else to a :class:`distributed.LocalCluster`
started for the command (workers, threads and memory limit settable). While the session is open:

* the export, read and validated by :func:`features.io.load_export` in the command's process
  (Parquet folders, CSV folders and SQL sources alike: the contract's checks need whole tables),
  is split **by entity** into dask dataframes (:func:`partition_leads`): leads by the hash of
  ``lead_id``, and each activity routed to the partition of its lead, so each partition holds
  complete leads;
* per-entity features are the same feature functions applied per partition
  (``map_partitions``): :func:`lead_snapshots`, :func:`deal_snapshots` (``features.deals.deal_snapshots``
  given the broadcast ``contexts``), :func:`account_snapshots` and :func:`map_leads`. What is a global aggregate
  (the point-in-time context: smoothed conversion rates by source and owner, owners' open leads,
  accounts' deal history, see :func:`features.leads.lead_context`) is computed once, from rows
  before each ``as_of`` only, and broadcast to every worker with the accounts table;
* LightGBM's fits run on the cluster (:mod:`models.dask_fit`, which reads :func:`active_client`).

Nothing outside a session changes: with no session :func:`lead_snapshots` is
:func:`features.leads.lead_snapshots`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from features import leads as lead_module
from features.contract import Export
from features.errors import FunnelcastError
from features import customers as customer_module
from features import deals as deal_module
from features.customers import AccountFeatureSpec, AccountRows, customer_value, high_value_threshold
from features.deals import DealFeatureSpec
from features.leads import LeadFeatureSpec, LeadHistory
from features.pit import open_leads

__all__ = ["ENGINES", "Engine", "EngineUnavailable", "PartitionedLeads", "UnknownEngine",
           "add_engine_args", "engine_from", "account_snapshots", "deal_snapshots",
           "active_client", "engine_session", "entity_buckets", "lead_snapshots", "map_leads",
           "partition_accounts", "partition_deals", "partition_leads", "using_client"]

#: The engines ``--engine`` accepts.
ENGINES = ("pandas", "dask")
#: The tables of an export that are split into partitions (or broadcast).
_TABLES = ("accounts", "leads", "opportunities", "stage_history", "activities")
#: The column of a lead partition holding the lead's position in ``export.leads`` (to restore its order).
ROW = "_row"


class UnknownEngine(FunnelcastError):
    """An engine name that is not one of :data:`ENGINES`, or engine settings out of range."""


class EngineUnavailable(FunnelcastError):
    """The Dask engine cannot start: dask is not installed, or its scheduler cannot be reached."""


@dataclass(frozen=True)
class Engine:
    """Which engine a command runs on, and the Dask cluster it uses.

    ``scheduler``: a running scheduler's address (``tcp://host:8786``); None starts a
    ``LocalCluster`` of ``workers`` workers with ``threads`` threads and ``memory_limit``
    (``"4GB"``, ``"auto"``) each, as processes unless ``processes`` is False (threads of this
    process). The export is split into two entity partitions per worker."""

    name: str = "pandas"
    scheduler: str | None = None
    workers: int = 2
    threads: int = 1
    memory_limit: str = "auto"
    processes: bool = True

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise UnknownEngine(f"engine {self.name!r} is not one of {', '.join(ENGINES)}")
        for label, value in (("workers", self.workers), ("threads", self.threads)):
            if value < 1:
                raise UnknownEngine(f"engine {label} must be at least 1, not {value}")

    @property
    def distributed(self) -> bool:
        return self.name == "dask"

    def describe(self) -> str:
        if not self.distributed:
            return "pandas (this process)"
        where = self.scheduler or (f"a local cluster of {self.workers} {'process' if self.processes else 'thread'} "
                                   f"workers x {self.threads} thread(s), memory limit {self.memory_limit} each")
        return f"dask on {where}"


_CLIENT: ContextVar[Any] = ContextVar("funnelcast_dask_client", default=None)


def active_client() -> Any:
    """The Dask client of the open :func:`engine_session` (None: the pandas engine)."""
    return _CLIENT.get()


def _client(engine: Engine) -> tuple[Any, Any]:
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - the `dask` extra is part of the test install
        raise EngineUnavailable("--engine dask needs the `dask` extra: pip install 'funnelcast[dask]'") from exc
    if engine.scheduler:
        try:
            return Client(engine.scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise EngineUnavailable(f"the Dask scheduler at {engine.scheduler} cannot be reached ({exc})") from exc
    cluster = LocalCluster(n_workers=engine.workers, threads_per_worker=engine.threads, processes=engine.processes,
                           memory_limit=engine.memory_limit, dashboard_address=None)
    return Client(cluster), cluster


@contextmanager
def engine_session(engine: Engine) -> Iterator[Any]:
    """Open ``engine`` for a command: the Dask client (also :func:`active_client`), or None for pandas."""
    if not engine.distributed:
        yield None
        return
    client, cluster = _client(engine)
    try:
        with using_client(client):
            yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


@contextmanager
def using_client(client: Any) -> Iterator[Any]:
    """Run the Dask engine on an existing ``distributed.Client`` (a notebook's, a test's) inside the block."""
    token = _CLIENT.set(client)
    try:
        yield client
    finally:
        _CLIENT.reset(token)


def _partitions(client: Any, npartitions: int | None = None) -> int:
    """``npartitions``, else two per worker of ``client``'s cluster."""
    return npartitions or max(1, 2 * len(client.scheduler_info().get("workers", {})))


def entity_buckets(ids: pd.Series, n: int) -> np.ndarray:
    """The partition (0..n-1) of each entity id: a stable hash of the id, so every row of an entity
    (its lead row, its activities) lands in the same one; missing ids get -1 (no partition)."""
    present = ids.notna().to_numpy()
    out = np.full(len(ids), -1, dtype=np.int64)
    hashed = pd.util.hash_array(ids[present].astype("str").to_numpy(dtype=object), categorize=False)
    out[present] = (hashed % np.uint64(n)).astype(np.int64)
    return out


def _bucket_rows(buckets: np.ndarray, n: int) -> list[np.ndarray]:
    """The row positions of each bucket 0..n-1, in file order (bucket -1: in none)."""
    order = np.argsort(buckets, kind="stable")
    bounds = np.searchsorted(buckets[order], np.arange(n + 1))
    return [order[bounds[i]:bounds[i + 1]] for i in range(n)]


def _from_pieces(client: Any, pieces: list[pd.DataFrame], meta: pd.DataFrame) -> Any:
    """A dask dataframe of ``pieces`` (partition ``i``: ``pieces[i]``), scattered to the workers."""
    import dask.dataframe as dd

    return dd.from_delayed(client.scatter(pieces), meta=meta, verify_meta=False)


def _scattered(client: Any, frame: pd.DataFrame, rows: list[np.ndarray]) -> Any:
    """``frame`` as a dask dataframe whose partition ``i`` holds the rows at ``rows[i]`` (held by the workers)."""
    return _from_pieces(client, [frame.iloc[r] for r in rows], frame.iloc[:0])


def _broadcast(client: Any, *objects: Any) -> list[Any]:
    """``objects`` copied to every worker once, as arguments of per-partition tasks."""
    import dask

    return [dask.delayed(f) for f in client.scatter(list(objects), broadcast=True)]


def _on_partitions(client: Any, tables: Sequence[Any], fn: Callable[..., pd.DataFrame], *args: Any,
                   order: list[str]) -> pd.DataFrame:
    """``fn(partition i of every table, *args)`` for each partition on the cluster, the outputs gathered and
    put in ``order`` (then ROW dropped). Dask needs no more of the output's schema than a frame."""
    first, *rest = tables
    frames = first.map_partitions(fn, *rest, *args, meta=pd.DataFrame({ROW: np.arange(0)}),
                                  align_dataframes=False, enforce_metadata=False)
    return _collected(client, frames, order)


def _with_rows(frame: pd.DataFrame, entities: pd.DataFrame, key: str) -> pd.DataFrame:
    """``frame`` (rows of entities named in its ``key`` column) with each entity's ROW (ids are unique)."""
    return frame.assign(**{ROW: frame[key].map(pd.Series(entities[ROW].to_numpy(), index=entities[key]))})


@dataclass
class PartitionedLeads:
    """An export's leads split by entity: partition ``i`` of ``leads`` and of ``activities`` hold the same leads."""

    leads: Any  # dask DataFrame, with the ROW column
    activities: Any  # dask DataFrame
    npartitions: int


def partition_leads(client: Any, export: Export, npartitions: int | None = None) -> PartitionedLeads:
    """``export``'s leads by the hash of ``lead_id`` and their activities routed to their lead's partition
    (activities of no lead belong to no lead partition)."""
    n = _partitions(client, npartitions)
    leads = export.leads.assign(**{ROW: np.arange(len(export.leads))})
    acts = export.activities
    return PartitionedLeads(_scattered(client, leads, _bucket_rows(entity_buckets(leads["lead_id"], n), n)),
                            _scattered(client, acts, _bucket_rows(entity_buckets(acts["lead_id"], n), n)), n)


def _partition_snapshots(leads: pd.DataFrame, activities: pd.DataFrame, base: Export,
                         contexts: dict[pd.Timestamp, Any], as_ofs: Sequence[pd.Timestamp],
                         spec: LeadFeatureSpec) -> pd.DataFrame:
    """The snapshots of one partition's leads: :func:`features.leads.lead_snapshots` (its one-pass
    :class:`~features.leads.LeadHistory`) of the partition with the broadcast global context of each
    ``as_of``, with each row's ROW."""
    times = [t for t in as_ofs if t in contexts]
    if not any(len(open_leads(leads, t)) for t in times):
        return pd.DataFrame()
    part = replace(base, leads=leads, activities=activities)
    return _with_rows(lead_module.lead_snapshots(part, times, spec, contexts=contexts), leads, "lead_id")


def _skeleton(export: Export) -> Export:
    """``export`` with every table empty: its stages, time and custom fields, for rebuilding partitions."""
    return replace(export, **{t: export.table(t).iloc[:0] for t in _TABLES})


def lead_snapshots(export: Export, as_ofs: Sequence[pd.Timestamp], spec: LeadFeatureSpec, *,
                   progress: bool = False) -> pd.DataFrame:
    """:func:`features.leads.lead_snapshots` on the active engine: with a Dask session, per entity
    partition on the cluster (the same function on each partition's leads and activities), the global
    context computed once per ``as_of`` and broadcast; the same frame (rows in the same order) either way."""
    client = active_client()
    if client is None:
        return lead_module.lead_snapshots(export, as_ofs, spec, progress=progress)
    parts = partition_leads(client, export)
    # global aggregates, point-in-time: the pandas path's own contexts (LeadHistory.context of every lead)
    history = LeadHistory(export, spec.horizon_days)
    contexts = {}
    for t in as_ofs:
        is_open = history.open_at(t)
        if is_open.any():
            contexts[t] = history.context(t, is_open, open_accounts_only=True)
    del history
    base = replace(_skeleton(export), accounts=export.accounts)
    out = _on_partitions(client, [parts.leads, parts.activities], _partition_snapshots,
                         *_broadcast(client, base, contexts), list(as_ofs), spec, order=["as_of", ROW])
    if out.empty:
        raise ValueError("no lead was open at any snapshot time: the export is too short or empty")
    return out


def _named_rows(keys: pd.Series, wanted: list[pd.Series]) -> list[np.ndarray]:
    """For each partition, the rows (file order) whose ``keys`` value is one of ``wanted[i]`` (a row named
    by deals of several partitions is copied to each)."""
    codes, uniques = pd.factorize(keys)
    out = []
    for names in wanted:
        hit = np.zeros(len(uniques) + 1, dtype=bool)  # the extra last slot: code -1, a missing key
        code = uniques.get_indexer(names.dropna().unique())
        hit[code[code >= 0]] = True
        out.append(np.flatnonzero(hit[codes]))
    return out


def partition_deals(client: Any, export: Export, npartitions: int | None = None) -> list[Any]:
    """``export``'s deals by the hash of ``opportunity_id``, with their stage entries and activities routed
    to their deal's partition and the leads and accounts they name copied to it: dask dataframes of
    opportunities (with ROW), stage history, activities, leads and accounts, partition ``i`` of each
    holding what the deals of partition ``i`` read."""
    n = _partitions(client, npartitions)
    opps = export.opportunities.assign(**{ROW: np.arange(len(export.opportunities))})
    rows = _bucket_rows(entity_buckets(opps["opportunity_id"], n), n)
    named = [opps.iloc[r] for r in rows]
    return [
        _scattered(client, opps, rows),
        _scattered(client, export.stage_history,
                   _bucket_rows(entity_buckets(export.stage_history["opportunity_id"], n), n)),
        _scattered(client, export.activities, _bucket_rows(entity_buckets(export.activities["opportunity_id"], n), n)),
        _scattered(client, export.leads, _named_rows(export.leads["lead_id"], [o["lead_id"] for o in named])),
        _scattered(client, export.accounts, _named_rows(export.accounts["account_id"], [o["account_id"] for o in named])),
    ]


def _partition_deal_snapshots(opps: pd.DataFrame, stage_history: pd.DataFrame, activities: pd.DataFrame,
                              leads: pd.DataFrame, accounts: pd.DataFrame, base: Export,
                              contexts: dict[pd.Timestamp, Any], as_ofs: Sequence[pd.Timestamp],
                              spec: DealFeatureSpec) -> pd.DataFrame:
    """The snapshots of one partition's deals: :func:`features.deals.deal_snapshots` (its one-pass
    :class:`~features.deals.DealHistory` of the partition) with the broadcast global context of each
    ``as_of``, with each row's ROW."""
    times = [t for t in as_ofs if t in contexts]
    if not any(len(deal_module.open_opportunities(opps, stage_history, t)) for t in times):
        return pd.DataFrame()
    part = replace(base, opportunities=opps.drop(columns=ROW), stage_history=stage_history, activities=activities,
                   leads=leads, accounts=accounts)
    return _with_rows(deal_module.deal_snapshots(part, times, spec, contexts=contexts), opps, "opportunity_id")


def deal_snapshots(export: Export, as_ofs: Sequence[pd.Timestamp], spec: DealFeatureSpec, *,
                   progress: bool = False) -> pd.DataFrame:
    """:func:`features.deals.deal_snapshots` on the active engine: with a Dask session, per deal partition
    on the cluster (:func:`partition_deals`), the global context (:meth:`~features.deals.DealHistory.context`
    of every deal: stage durations and win rates, owners', accounts' history) computed once per ``as_of``
    and broadcast; the same frame (rows in the same order) either way."""
    client = active_client()
    if client is None:
        return deal_module.deal_snapshots(export, as_ofs, spec, progress=progress)
    tables = partition_deals(client, export)
    history = deal_module.DealHistory(export)
    contexts = {}
    for t in as_ofs:
        is_open = history.open_at(t)
        if is_open.any():
            contexts[t] = history.context(t, is_open, spec.horizon_days)
    del history
    out = _on_partitions(client, tables, _partition_deal_snapshots, *_broadcast(client, _skeleton(export), contexts),
                         list(as_ofs), spec, order=["as_of", ROW])
    if out.empty:
        raise ValueError("no deal was open at any snapshot time: the export is too short or empty")
    return out


def partition_accounts(client: Any, export: Export, npartitions: int | None = None) -> list[Any]:
    """``export`` split by the hash of the account: partition ``i`` of the returned dask dataframes
    (accounts, leads, opportunities, stage history, activities) holds every row of its accounts, as
    :class:`features.customers.AccountRows` finds them (activities through their lead or deal, stage
    entries through their deal); rows of no account are in none."""
    n = _partitions(client, npartitions)
    keys = pd.concat([export.accounts["account_id"], export.leads["account_id"], export.opportunities["account_id"],
                      export.activities["account_id"]], ignore_index=True).dropna().unique()
    ids = pd.Series(keys, dtype="str")
    buckets = entity_buckets(ids, n)
    rows = AccountRows(export)
    parts = []
    for i in range(n):
        sub, acts = rows.of(ids[buckets == i].tolist())
        parts.append(replace(sub, activities=acts.drop(columns="_account")))
    return [_from_pieces(client, [p.table(t) for p in parts], export.table(t).iloc[:0]) for t in _TABLES]


def _partition_account_snapshots(accounts: pd.DataFrame, leads: pd.DataFrame, opportunities: pd.DataFrame,
                                 stage_history: pd.DataFrame, activities: pd.DataFrame, base: Export,
                                 cutoff: pd.Timestamp, spec: AccountFeatureSpec, threshold: float) -> pd.DataFrame:
    """:func:`features.customers.account_snapshots` of one partition's accounts (the global threshold)."""
    part = replace(base, accounts=accounts, leads=leads, opportunities=opportunities, stage_history=stage_history,
                   activities=activities)
    if not customer_value(opportunities, cutoff, spec.window_days)["complete"].any():
        return pd.DataFrame()
    frame, _ = customer_module.account_snapshots(part, cutoff, spec, threshold=threshold)
    return frame.assign(**{ROW: 0})


def account_snapshots(export: Export, cutoff: pd.Timestamp, spec: AccountFeatureSpec, *, quantile: float = 0.8,
                      threshold: float | None = None, progress: bool = False) -> tuple[pd.DataFrame, float]:
    """:func:`features.customers.account_snapshots` on the active engine: with a Dask session, per account
    partition on the cluster (:func:`partition_accounts`), the high-value threshold (the one global
    number: a quantile of every complete customer value) computed first; the same frame either way."""
    client = active_client()
    if client is None:
        return customer_module.account_snapshots(export, cutoff, spec, quantile=quantile, threshold=threshold,
                                                 progress=progress)
    values = customer_value(export.opportunities, cutoff, spec.window_days)
    done = values.loc[values["complete"], "value"]
    if done.empty:  # no customer to learn from: the pandas path raises its own error, naming the cutoff
        return customer_module.account_snapshots(export, cutoff, spec, quantile=quantile, threshold=threshold)
    threshold = high_value_threshold(done, quantile) if threshold is None else threshold
    tables = partition_accounts(client, export)
    frame = _on_partitions(client, tables, _partition_account_snapshots, *_broadcast(client, _skeleton(export)),
                           cutoff, spec, threshold, order=["as_of", "account_id"])
    return frame, threshold


def _collected(client: Any, frame: Any, order: list[str]) -> pd.DataFrame:
    """The partitions of the dask dataframe ``frame`` gathered and put in ``order`` (then ROW dropped);
    empty partitions are left out of the concatenation (their placeholder dtypes would widen columns)."""
    parts = [p for p in client.gather(client.compute(frame.to_delayed())) if len(p)]
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, ignore_index=True).sort_values(order, kind="stable")
    out = out.drop(columns=ROW).reset_index(drop=True)
    return _text_as_one_process(out, "as_of") if "as_of" in order else out


def _text_as_one_process(frame: pd.DataFrame, by: str) -> pd.DataFrame:
    """Text columns typed as in the pandas path. A feature column is built per snapshot time and pandas
    types it ``str`` when it holds text, ``object`` when all missing; concatenated, one ``object`` piece
    makes the column ``object``. Per partition a snapshot's piece is smaller and more often all missing,
    so a column the pandas path has as ``str`` can arrive as ``object``: it is ``str`` again when every
    snapshot time (``by``) has text in it and it holds nothing else."""
    for c in frame.columns[frame.dtypes == object]:
        values = frame[c]
        known = values.notna()
        if known.any() and values[known].map(type).eq(str).all() and known.groupby(frame[by]).any().all():
            frame[c] = values.astype("str")
    return frame


def _partition_apply(leads: pd.DataFrame, activities: pd.DataFrame, accounts: pd.DataFrame,
                     fn: Callable[[pd.DataFrame, pd.DataFrame, pd.DataFrame], pd.DataFrame]) -> pd.DataFrame:
    if leads.empty:
        return pd.DataFrame()
    out = fn(leads.drop(columns=ROW), accounts, activities).reset_index(drop=True)
    return out.assign(**{ROW: leads[ROW].to_numpy()})


def map_leads(export: Export, leads: pd.DataFrame,
              fn: Callable[[pd.DataFrame, pd.DataFrame, pd.DataFrame], pd.DataFrame]) -> pd.DataFrame:
    """``fn(leads, accounts, activities)`` (one output row per lead, in the leads' order) on the active
    engine: with a Dask session, per entity partition (each partition's leads with their activities and
    every account), the rows put back in the order of ``leads``; else in this process."""
    client = active_client()
    if client is None or leads.empty:
        return fn(leads, export.accounts, export.activities)
    parts = partition_leads(client, replace(export, leads=leads))
    return _on_partitions(client, [parts.leads, parts.activities], _partition_apply,
                          *_broadcast(client, export.accounts), fn, order=[ROW])


def add_engine_args(parser: Any) -> None:
    """``--engine``, ``--scheduler`` and the local cluster's size: the flags of `train`, `score` and `refresh`."""
    parser.add_argument("--engine", choices=ENGINES, help="pandas (this process) or dask (default FUNNELCAST_ENGINE, "
                        "else pandas)")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address for --engine dask, e.g. "
                        "tcp://10.0.0.5:8786 (default FUNNELCAST_DASK_SCHEDULER, else a local cluster for the command)")
    parser.add_argument("--dask-workers", type=int, help="workers of the local cluster (default 2)")
    parser.add_argument("--dask-threads", type=int, help="threads per worker of the local cluster (default 1)")
    parser.add_argument("--dask-memory-limit", help="memory limit per worker of the local cluster, e.g. 4GB "
                        "(default auto: the machine's memory shared by the workers)")


def engine_from(args: Any, settings: Any, *, announce: bool = False) -> Engine:
    """The :class:`Engine` of a command: its flags (:func:`add_engine_args`), else the settings
    (``FUNNELCAST_ENGINE``, ``FUNNELCAST_DASK_*``). ``announce``: print which engine, when it is Dask."""
    def pick(flag: str, setting: str) -> Any:
        value = getattr(args, flag, None)
        return value if value is not None else getattr(settings, setting)

    engine = Engine(name=pick("engine", "engine"), scheduler=pick("scheduler", "dask_scheduler"),
                    workers=pick("dask_workers", "dask_workers"), threads=pick("dask_threads", "dask_threads"),
                    memory_limit=pick("dask_memory_limit", "dask_memory_limit"))
    if announce and engine.distributed:
        print(f"engine: {engine.describe()}")
    return engine

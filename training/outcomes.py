"""Outcomes the CRM reported through ``POST /v1/outcomes``, joined to training labels.

The API stores them (``serving/store.py``, table ``outcomes``); training only reads that
table, reflected from the database so its schema lives in one place. Point in time: an
outcome is used for a snapshot ``as_of = t`` (horizon ``h``) only when it happened before
``t + h``, so an outcome after a snapshot's label horizon, or after the training cutoff,
changes nothing; outcomes only ever touch labels, never features.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from sqlalchemy import MetaData, Table, create_engine, inspect, select

#: Outcomes that are the positive class of their task (as in the API).
POSITIVE = {"converted", "won"}
COLUMNS = ["record_id", "outcome", "occurred_at"]


def stored_outcomes(url: str, task: str, cutoff: pd.Timestamp | None = None) -> pd.DataFrame:
    """The outcomes stored for ``task`` that happened at or before ``cutoff``: record_id, outcome, occurred_at (UTC).

    An empty frame when the database or its ``outcomes`` table does not exist yet.
    """
    if url.startswith("sqlite:///") and not __import__("pathlib").Path(url.removeprefix("sqlite:///")).exists():
        return pd.DataFrame(columns=COLUMNS)
    engine = create_engine(url, future=True)
    try:
        if not inspect(engine).has_table("outcomes"):
            return pd.DataFrame(columns=COLUMNS)
        table = Table("outcomes", MetaData(), autoload_with=engine)
        q = select(table.c.record_id, table.c.outcome, table.c.occurred_at).where(table.c.task == task)
        with engine.connect() as conn:
            frame = pd.DataFrame(conn.execute(q).mappings().all(), columns=COLUMNS)
    finally:
        engine.dispose()
    frame["record_id"] = frame["record_id"].astype("str")
    frame["occurred_at"] = pd.to_datetime(frame["occurred_at"], utc=True)  # SQLite drops the zone: stored as UTC
    if cutoff is not None:
        frame = frame[frame["occurred_at"] <= cutoff]
    return frame.reset_index(drop=True)


@dataclass
class OutcomeLabels:
    """How stored outcomes changed a snapshot frame's labels."""

    outcomes: int  # stored outcomes considered (at or before the cutoff)
    records_matched: int  # of which the record appears in some snapshot
    labels_from_outcomes: int  # snapshot rows whose label the outcome decided
    labels_changed: int  # of which the export's label differed

    def as_metrics(self) -> dict[str, float]:
        return {f"outcomes_{k}": float(v) for k, v in self.__dict__.items()}


def apply_outcomes(
    snaps: pd.DataFrame, outcomes: pd.DataFrame, id_column: str, horizon_days: int
) -> tuple[pd.DataFrame, OutcomeLabels]:
    """Labels of ``snaps`` (``id_column``, ``as_of``, ``label``) with the stored outcomes applied.

    For a row at ``as_of = t`` whose record has an outcome at ``o``:

    * ``o >= t + h``: unchanged (the outcome is after the row's label window);
    * ``o < t + h``: the outcome decides: label 1 when it is positive and ``o >= t``, else 0
      (the record was disqualified/lost, or decided before ``t``, so it did not convert in
      ``[t, t + h)``), the same rule as the export's own label.
    """
    if outcomes.empty:
        return snaps, OutcomeLabels(0, 0, 0, 0)
    latest = outcomes.sort_values("occurred_at").drop_duplicates("record_id", keep="last").set_index("record_id")
    ids = snaps[id_column].astype("str")
    matched = ids.isin(latest.index)
    occurred = ids.map(latest["occurred_at"])
    positive = ids.map(latest["outcome"]).isin(POSITIVE)
    h = pd.Timedelta(days=horizon_days)
    decides = matched & (occurred < snaps["as_of"] + h)
    new = (positive & (occurred >= snaps["as_of"])).astype(int)
    label = snaps["label"].where(~decides, new).astype(int)
    stats = OutcomeLabels(
        outcomes=len(latest),
        records_matched=int(latest.index.isin(ids).sum()),
        labels_from_outcomes=int(decides.sum()),
        labels_changed=int((label != snaps["label"]).sum()),
    )
    return snaps.assign(label=label), stats

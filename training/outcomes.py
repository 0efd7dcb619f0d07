"""Outcomes the CRM reported through ``POST /v1/outcomes``, joined to training labels.

The API stores them (``serving/store.py``, table ``outcomes``); training only reads that
table, reflected from the database so its schema lives in one place. Point in time: an
outcome is used for a snapshot ``as_of = t`` (horizon ``h``) only when it happened before
``t + h``, so an outcome after a snapshot's label horizon, or after the training cutoff,
changes nothing; outcomes only ever touch labels, never features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import MetaData, Table, create_engine, inspect, select

#: Outcomes that are the positive class of their task (as in the API).
POSITIVE = {"converted", "won"}
COLUMNS = ["record_id", "outcome", "occurred_at"]


def stored_outcomes(url: str, task: str, cutoff: pd.Timestamp | None = None) -> pd.DataFrame:
    """The outcomes stored for ``task`` that happened at or before ``cutoff``: record_id, outcome, occurred_at (UTC).

    An empty frame when the database or its ``outcomes`` table does not exist yet.
    """
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
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


@dataclass
class DealOutcomeLabels(OutcomeLabels):
    """How stored deal outcomes changed a deal snapshot frame (see :func:`apply_deal_outcomes`)."""

    rows_dropped: int = 0  # snapshots taken at or after the reported close: the deal was not open then


def apply_deal_outcomes(
    snaps: pd.DataFrame, outcomes: pd.DataFrame, last_open_stage: str | None = None
) -> tuple[pd.DataFrame, DealOutcomeLabels]:
    """Deal snapshots (``opportunity_id``, ``as_of``, ``stage``, ``amount_filled``, ``closed_at``,
    ``won``, ``won_amount``, ``next_stage_at``) with stored ``won`` / ``lost`` outcomes applied.

    The deal models' labels are built from these columns and censored at each fit's cutoff
    (``training.deals``), so the outcome replaces what the export says happened: for a row at
    ``as_of = t`` whose deal was reported closed at ``o``:

    * ``t < o``: ``closed_at = o``, ``won`` = 1 or 0, ``won_amount`` the export's won amount
      (else the row's amount) when won, else empty; ``next_stage_at``: a win is the next stage
      of a deal in ``last_open_stage`` (it becomes ``o`` unless reached earlier); after a loss
      no later stage is entered (a next stage at or after ``o`` is cleared);
    * ``t >= o``: the row is dropped (the deal was closed, not open, at that snapshot).

    Which outcomes count is the caller's: pass those at or before the training cutoff (the
    fit censors later closes anyway). Features are never touched.
    """
    if outcomes.empty:
        return snaps, DealOutcomeLabels(0, 0, 0, 0, 0)
    latest = outcomes.sort_values("occurred_at").drop_duplicates("record_id", keep="last").set_index("record_id")
    ids = snaps["opportunity_id"].astype("str")
    matched = ids.isin(latest.index)
    occurred = pd.to_datetime(ids.map(latest["occurred_at"]), utc=True)
    won = ids.map(latest["outcome"]).isin(POSITIVE)
    drop = matched & (snaps["as_of"] >= occurred)
    decides = matched & ~drop
    out = snaps.copy()
    out.loc[decides, "closed_at"] = occurred[decides]
    out.loc[decides, "won"] = won[decides].astype(float)
    amount = out["won_amount"].where(out["won_amount"].notna(), out["amount_filled"])
    out.loc[decides, "won_amount"] = amount.where(won, np.nan)[decides]
    nxt = out["next_stage_at"]
    if last_open_stage is not None:
        reach = decides & won & (out["stage"] == last_open_stage) & ~(nxt < occurred)
        out.loc[reach, "next_stage_at"] = occurred[reach]
    out.loc[decides & ~won & (nxt >= occurred), "next_stage_at"] = pd.NaT
    kept = ~drop
    same_close = (out["closed_at"] == snaps["closed_at"]) | (out["closed_at"].isna() & snaps["closed_at"].isna())
    changed = ((out["won"].fillna(-1) != snaps["won"].fillna(-1)) | ~same_close) & kept
    stats = DealOutcomeLabels(
        outcomes=len(latest),
        records_matched=int(latest.index.isin(ids).sum()),
        labels_from_outcomes=int(decides.sum()),
        labels_changed=int(changed.sum()),
        rows_dropped=int(drop.sum()),
    )
    return out[kept].reset_index(drop=True), stats

"""Accounts, traits, allocation and the worklist: ``POST /v1/accounts/score``, ``GET /v1/traits``,
``POST /v1/allocation``, ``GET /v1/worklist``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Annotated

import pandas as pd
from fastapi import APIRouter, Query, Request

from features.contract import Export
from models.allocation import AllocationError, allocate
from models.traits import trait_label
from models.worklist import efforts_of, ranked
from serving.deps import HighValueModelDep, SettingsDep
from serving.errors import RequestProblem
from serving.records import RequestRecords, check_batch, unique_ids, utc_timestamp
from serving.refresh import latest_snapshot, refresher
from serving.snapshots import payload_key
from serving.schemas.accounts import (
    AccountScore,
    AccountScoreItem,
    AccountScoreRequest,
    AccountScoreResponse,
    AllocationRequest,
    AllocationResponse,
    Assignment,
    EffortOut,
    ImportanceOut,
    ItemIn,
    TraitOut,
    TraitsResponse,
    WorkItem,
    Worklist,
    WorklistResponse,
)
from serving.schemas.common import ModelRef, error_responses, served_reasons
from serving.security import ApiKeyDep

router = APIRouter(prefix="/v1", tags=["accounts"], dependencies=[ApiKeyDep])


def _finite(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def account_export(items: list[AccountScoreItem], spec: object, open_stages: Sequence[str]) -> Export:
    """The typed accounts, leads, opportunities and activities of a request; 422 on a bad field
    or a record of another account. An activity naming no lead, deal or account is the account's."""
    ids = [it.account.account_id.strip() for it in items]
    unique_ids(ids, "accounts[{}].account.account_id", "account id")
    records = RequestRecords("accounts", "leads", "opportunities", "activities")
    for i, (it, account_id) in enumerate(zip(items, ids, strict=True)):
        records.add("accounts", it.account, f"accounts[{i}].account")
        for j, lead in enumerate(it.leads):
            records.add("leads", lead, f"accounts[{i}].leads[{j}]", account_id=account_id)
        for j, opportunity in enumerate(it.opportunities):
            records.add("opportunities", opportunity, f"accounts[{i}].opportunities[{j}]", account_id=account_id)
        for j, activity in enumerate(it.activities):
            orphan = not (activity.lead_id or activity.opportunity_id or activity.account_id)
            records.add("activities", activity, f"accounts[{i}].activities[{j}]",
                        **({"account_id": account_id} if orphan else {}))
    return records.export(open_stages, spec)


@router.post("/accounts/score", response_model=AccountScoreResponse, responses=error_responses(401, 413, 422, 429, 503))
def score_accounts(body: AccountScoreRequest, model: HighValueModelDep, settings: SettingsDep) -> AccountScoreResponse:
    """P(high value), expected customer value and the top reasons for prospects and customers
    alike (look-alikes). Send each account with its leads, opportunities and activities."""
    check_batch(len(body.accounts), settings.max_batch, "accounts")
    as_of = utc_timestamp(body.as_of)
    export = account_export(body.accounts, model.scorer.spec, settings.open_stages)
    scored = model.scorer.score(export, list(export.accounts["account_id"]), as_of)
    ref = ModelRef(name=model.name, version=model.version)
    scores = [
        AccountScore(account_id=r.account_id, probability=r.probability, expected_value=r.expected_value,
                     is_customer=bool(r.is_customer), base_probability=r.base_probability,
                     reasons=served_reasons(r.reasons), model=ref)
        for r in scored.itertuples(index=False)
    ]
    return AccountScoreResponse(as_of=as_of.to_pydatetime(), model=ref, scores=scores)


@router.get("/traits", response_model=TraitsResponse, responses=error_responses(401, 503))
def traits(model: HighValueModelDep) -> TraitsResponse:
    """The high-value traits logged with the served high_value model, and its global SHAP importance."""
    s = model.scorer
    out = []
    for t in s.traits:
        out.append(TraitOut(**{k: t[k] for k in ("rank", "trait", "conditions", "accounts", "share", "lift", "lift_low",
                                                 "lift_high", "stability", "confirmed")},
                            heldout_lift=_finite(t["heldout_lift"]), heldout_low=_finite(t["heldout_low"]),
                            heldout_high=_finite(t["heldout_high"]), label=trait_label(t)))
    imp = [ImportanceOut(feature=r["feature"], importance=r["importance"], direction=r["direction"]) for r in s.importance]
    return TraitsResponse(model=ModelRef(name=model.name, version=model.version), threshold=s.threshold,
                          traits=out, importance=imp)


@router.post("/allocation", response_model=AllocationResponse, responses=error_responses(401, 422))
def allocation(body: AllocationRequest, settings: SettingsDep) -> AllocationResponse:
    """Assign items to reps to maximise total expected value within weekly capacity and the
    constraints (region, team, product skills, pinned items), exactly; each rep's worklist is
    ordered and says why each item is there. Negative capacity, an unknown rep, or more than
    FUNNELCAST_MAX_ALLOCATION_CELLS items x rep slots is a 422."""
    reps = pd.DataFrame([r.model_dump() for r in body.reps])
    items = pd.DataFrame([i.model_dump() for i in body.items]) if body.items else pd.DataFrame(
        columns=list(ItemIn.model_fields))
    if "rep_factor" in reps:
        reps["rep_factor"] = reps["rep_factor"].astype(float).fillna(1.0)
    try:
        result = allocate(reps, items, max_cells=settings.max_allocation_cells)
    except AllocationError as exc:
        raise RequestProblem(str(exc), [(exc.path, exc.reason)]) from exc
    lists = result.worklists()
    worklists = [
        Worklist(owner_id=r.owner_id, capacity=r.capacity,
                 items=[Assignment(**a) for a in lists[r.owner_id][list(Assignment.model_fields)].to_dict("records")]
                 if r.owner_id in lists else [])
        for r in body.reps
    ]
    return AllocationResponse(total_value=result.total_value, method=result.method, worklists=worklists,
                              unassigned=[str(x) for x in result.unassigned["item_id"]])


# ------------------------------------------------------------------ worklist from the latest scored snapshot
def _text(v: object) -> str | None:
    return v if isinstance(v, str) else None


def _num(v: object) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


@router.get("/worklist", response_model=WorklistResponse, responses=error_responses(401, 422, 503))
def worklist(request: Request,
             owner: Annotated[str | None, Query(description="Only this owner's items")] = None,
             team: Annotated[str | None, Query(description="Only this team's items")] = None,
             limit: Annotated[int, Query(ge=1, le=1000)] = 50,
             effort_lead: Annotated[float | None, Query(ge=0.01, le=1000, description="Effort of a lead")] = None,
             effort_deal: Annotated[float | None, Query(ge=0.01, le=1000, description="Effort of a deal")] = None,
             effort_account: Annotated[float | None, Query(ge=0.01, le=1000, description="Effort of an account")] = None,
             ) -> WorklistResponse:
    """One list in one unit, from the latest scored snapshot: open leads (P(converts) x first-deal
    value), open deals (P(won) x amount) and accounts (value expected in the next 12 months beyond
    what they booked and beyond their open deals and leads), ranked by value still to be won per
    unit of effort, with reasons a rep can act on and the trend of each score. The efforts are in
    rep touches, measured on the export by the refresh (``efforts`` says each one and where it came
    from); ``FUNNELCAST_EFFORT_*`` settings, then these parameters, override them. A part whose
    model is not loaded is named in ``missing``."""
    state = request.app.state
    snap = latest_snapshot(state)
    frame = refresher(state).scores(snap)
    efforts, deal_stage = efforts_of(refresher(state).store.payload(snap.id, payload_key("efforts", {})))
    s = state.settings
    efforts = efforts.overridden({"lead": s.effort_lead, "deal": s.effort_deal, "account": s.effort_account}, "setting")
    efforts = efforts.overridden({"lead": effort_lead, "deal": effort_deal, "account": effort_account}, "request")
    frame = ranked(frame, efforts, deal_stage, id_column="entity_id")
    owners = sorted({o for o in frame["owner_id"] if isinstance(o, str)})
    teams = sorted({t for t in frame["team"] if isinstance(t, str)})
    if owner is not None and owner not in owners:
        raise RequestProblem(f"unknown owner {owner!r}", [("owner", f"not one of {', '.join(owners[:20])}")])
    view = frame
    if owner:
        view = view[view["owner_id"] == owner]
    if team:
        view = view[view["team"] == team]
    items = [WorkItem(kind=r.kind, id=str(r.entity_id), name=_text(r.name), owner_id=_text(r.owner_id),
                      team=_text(r.team), score=float(r.probability), previous_score=_num(r.previous_probability),
                      trend=r.trend, expected_value=float(r.expected_value), effort=float(r.effort),
                      value_per_effort=float(r.value_per_effort), reasons=list(r.reasons))
             for r in view.head(limit).itertuples(index=False)]
    as_of = snap.as_of.isoformat() if snap.as_of is not None else ""
    return WorklistResponse(as_of=as_of, refreshed_at=snap.refreshed_at.isoformat(), age_seconds=snap.age_seconds(),
                            snapshot_id=snap.id, items=items, owners=owners, teams=teams, missing=list(snap.missing),
                            effort_unit=efforts.unit, efforts=[EffortOut(**asdict(e)) for e in efforts.rows()])

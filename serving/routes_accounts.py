"""Accounts, traits, allocation and the worklist: ``POST /v1/accounts/score``, ``GET /v1/traits``,
``POST /v1/allocation``, ``GET /v1/worklist``."""

from __future__ import annotations

import math
import threading
from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from features.contract import Export
from features.errors import ModelNotAvailable
from features.io import coerce_table
from models.allocation import AllocationError, allocate
from models.registry import LoadedModel
from models.tasks import Task
from serving.deps import ApiKeyDep, SettingsDep
from serving.errors import RequestProblem, bad_rows_as_problem
from serving.records import _row, utc_timestamp
from serving.schemas import AccountRecord, ActivityRecord, ErrorResponse, LeadRecord, ModelRef, Reason

router = APIRouter(prefix="/v1", tags=["accounts"], dependencies=[ApiKeyDep])
_ERRORS = {401: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}
#: Effort per item kind (a lead is one unit; a deal and an account need more of a rep's week).
EFFORT = {"lead": 1.0, "deal": 2.0, "account": 3.0}


async def get_high_value_model(request: Request) -> LoadedModel:
    # async: it only reads the app state (see serving/deps.py)
    loaded = request.app.state.models.get(Task.HIGH_VALUE.value)
    if loaded is None:
        reason = request.app.state.load_errors.get(Task.HIGH_VALUE.value, "not loaded; run `funnelcast train-accounts`")
        raise ModelNotAvailable(Task.HIGH_VALUE.value, reason)
    return loaded


HighValueModelDep = Annotated[LoadedModel, Depends(get_high_value_model)]


# ------------------------------------------------------------------ schemas
class OpportunityRecord(BaseModel):
    opportunity_id: str = Field(min_length=1)
    account_id: str | None = None
    created_at: Any
    type: str | None = None
    product: str | None = None
    amount: float | None = Field(None, ge=0)
    stage: str
    outcome: str
    closed_at: Any = None


class AccountScoreItem(BaseModel):
    account: AccountRecord
    leads: list[LeadRecord] = Field(default_factory=list)
    opportunities: list[OpportunityRecord] = Field(default_factory=list)
    activities: list[ActivityRecord] = Field(default_factory=list)


class AccountScoreRequest(BaseModel):
    as_of: Any = Field(None, description="Score as of this time (default: now)")
    accounts: list[AccountScoreItem] = Field(min_length=1)


class AccountScore(BaseModel):
    account_id: str
    probability: float = Field(description="P(high value): customer value in the top share within a year of the first win")
    expected_value: float = Field(description="Expected customer value over the first year")
    is_customer: bool
    base_probability: float
    reasons: list[Reason]
    model: ModelRef


class AccountScoreResponse(BaseModel):
    as_of: Any
    model: ModelRef
    scores: list[AccountScore]


class RepIn(BaseModel):
    owner_id: str = Field(min_length=1)
    capacity: float = Field(description="Items per week (>= 0)", le=100_000)
    team: str | None = None
    region: str | None = None
    skills: list[str] | None = Field(None, description="Products the rep can sell (none: all)")
    rep_factor: float | None = Field(None, ge=0, description="Relative conversion skill (default 1)")


class ItemIn(BaseModel):
    item_id: str = Field(min_length=1)
    kind: str = Field("lead", description="lead, deal or account")
    expected_value: float
    owner_id: str | None = Field(None, description="Current owner (must be one of the reps)")
    region: str | None = None
    team: str | None = None
    product: str | None = None
    pinned_to: str | None = Field(None, description="Only this rep may work it")
    reason: str | None = None


class AllocationRequest(BaseModel):
    reps: list[RepIn] = Field(min_length=1, max_length=1_000)
    items: list[ItemIn] = Field(max_length=10_000)


class Assignment(BaseModel):
    item_id: str
    kind: str
    rank: int
    value: float
    expected_value: float
    why: str


class Worklist(BaseModel):
    owner_id: str
    capacity: float
    items: list[Assignment]


class AllocationResponse(BaseModel):
    total_value: float
    method: str
    worklists: list[Worklist]
    unassigned: list[str]


class TraitOut(BaseModel):
    rank: int
    trait: str
    conditions: list[dict[str, Any]]
    accounts: int
    share: float
    lift: float
    lift_low: float
    lift_high: float
    heldout_lift: float | None
    heldout_low: float | None
    heldout_high: float | None
    stability: float
    confirmed: bool


class ImportanceOut(BaseModel):
    feature: str
    importance: float
    direction: str


class TraitsResponse(BaseModel):
    model: ModelRef
    threshold: float = Field(description="Customer value at or above which an account is high value")
    traits: list[TraitOut]
    importance: list[ImportanceOut]


class WorkItem(BaseModel):
    kind: str
    id: str
    owner_id: str | None
    team: str | None
    score: float = Field(description="Probability (lead: converts; deal: won; account: high value)")
    expected_value: float
    effort: float
    value_per_effort: float
    reasons: list[str]


class WorklistResponse(BaseModel):
    as_of: str
    items: list[WorkItem]
    owners: list[str]
    teams: list[str]
    missing: list[str] = Field(description="Parts not available (a model not registered, ...)")


# ------------------------------------------------------------------ helpers
def _finite(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def _request_export(items: list[AccountScoreItem], open_stages: tuple[str, ...]) -> Export:
    ids = [it.account.account_id.strip() for it in items]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise RequestProblem("duplicate account ids in the batch",
                             [(f"accounts[{k}].account.account_id", f"duplicate account id {ids[k]!r}")
                              for k in range(len(ids)) if ids[k] in dup])
    rows: dict[str, tuple[list, list]] = {t: ([], []) for t in ("accounts", "leads", "opportunities", "activities")}
    for i, it in enumerate(items):
        rows["accounts"][0].append(_row(it.account))
        rows["accounts"][1].append(f"accounts[{i}].account")
        for name, recs in (("leads", it.leads), ("opportunities", it.opportunities), ("activities", it.activities)):
            for j, rec in enumerate(recs):
                row = _row(rec)
                if name != "activities" and not row.get("account_id"):
                    row["account_id"] = ids[i]
                elif name != "activities" and str(row["account_id"]).strip() != ids[i]:
                    raise RequestProblem(f"{name[:-1]} of another account",
                                         [(f"accounts[{i}].{name}[{j}].account_id", f"is not {ids[i]!r}")])
                if name == "activities" and not (row.get("lead_id") or row.get("opportunity_id") or row.get("account_id")):
                    row["account_id"] = ids[i]
                rows[name][0].append(row)
                rows[name][1].append(f"accounts[{i}].{name}[{j}]")
    bad, frames = [], {}
    from features.contract import TABLES

    for name, (recs, paths) in rows.items():
        frame = pd.DataFrame(recs) if recs else pd.DataFrame(columns=TABLES[name].column_names)
        out, problems = coerce_table(name, frame, open_stages=open_stages, row_offset=0)
        bad.extend((paths[b.row], b) for b in problems)
        frames[name] = out
    if bad:
        raise bad_rows_as_problem(bad)
    hist = pd.DataFrame({"opportunity_id": pd.Series(dtype=object), "stage": pd.Series(dtype=object),
                         "entered_at": pd.Series(dtype="datetime64[ns, UTC]"), "amount": pd.Series(dtype=float)})
    return Export(accounts=frames["accounts"], leads=frames["leads"], opportunities=frames["opportunities"],
                  stage_history=hist, activities=frames["activities"], open_stages=open_stages)


# ------------------------------------------------------------------ routes
@router.post("/accounts/score", response_model=AccountScoreResponse, responses=_ERRORS)
def score_accounts(body: AccountScoreRequest, model: HighValueModelDep, settings: SettingsDep) -> AccountScoreResponse:
    """P(high value), expected customer value and the top reasons for prospects and customers
    alike (look-alikes). Send each account with its leads, opportunities and activities."""
    if len(body.accounts) > settings.max_batch:
        raise RequestProblem(f"batch of {len(body.accounts):,} accounts exceeds the limit of {settings.max_batch:,}",
                             [("accounts", f"at most {settings.max_batch} items")], status_code=413)
    try:
        as_of = utc_timestamp(pd.Timestamp(body.as_of).to_pydatetime() if body.as_of is not None else None)
    except (ValueError, TypeError):
        raise RequestProblem("as_of is not a timestamp", [("as_of", f"not an ISO 8601 timestamp: {body.as_of!r}")])
    export = _request_export(body.accounts, settings.open_stages)
    scored = model.scorer.score(export, list(export.accounts["account_id"]), as_of)
    ref = ModelRef(name=model.name, version=model.version)
    scores = [
        AccountScore(account_id=r.account_id, probability=r.probability, expected_value=r.expected_value,
                     is_customer=bool(r.is_customer), base_probability=r.base_probability,
                     reasons=[Reason(**{**x, "value": None if isinstance(x["value"], float) and not math.isfinite(x["value"])
                                         else x["value"]}) for x in r.reasons], model=ref)
        for r in scored.itertuples(index=False)
    ]
    return AccountScoreResponse(as_of=as_of.isoformat(), model=ref, scores=scores)


@router.get("/traits", response_model=TraitsResponse, responses=_ERRORS)
def traits(model: HighValueModelDep) -> TraitsResponse:
    """The high-value traits logged with the served high_value model, and its global SHAP importance."""
    s = model.scorer
    out = []
    for t in s.traits:
        out.append(TraitOut(**{k: t[k] for k in ("rank", "trait", "conditions", "accounts", "share", "lift", "lift_low",
                                                 "lift_high", "stability", "confirmed")},
                            heldout_lift=_finite(t["heldout_lift"]), heldout_low=_finite(t["heldout_low"]),
                            heldout_high=_finite(t["heldout_high"])))
    imp = [ImportanceOut(feature=r["feature"], importance=r["importance"], direction=r["direction"]) for r in s.importance]
    return TraitsResponse(model=ModelRef(name=model.name, version=model.version), threshold=s.threshold,
                          traits=out, importance=imp)


@router.post("/allocation", response_model=AllocationResponse, responses=_ERRORS)
def allocation(body: AllocationRequest) -> AllocationResponse:
    """Assign items to reps to maximise total expected value within weekly capacity and the
    constraints (region, team, product skills, pinned items), exactly; each rep's worklist is
    ordered and says why each item is there. Negative capacity or an unknown rep is a 422."""
    reps = pd.DataFrame([r.model_dump() for r in body.reps])
    items = pd.DataFrame([i.model_dump() for i in body.items]) if body.items else pd.DataFrame(
        columns=list(ItemIn.model_fields))
    if "rep_factor" in reps:
        reps["rep_factor"] = reps["rep_factor"].astype(float).fillna(1.0)
    try:
        result = allocate(reps, items)
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


# ------------------------------------------------------------------ worklist over the configured export
_lock = threading.Lock()


def _worklist_frame(request: Request, settings) -> tuple[pd.DataFrame, str, list[str]]:
    state = request.app.state
    cached = getattr(state, "worklist", None)
    if cached is not None:
        return cached
    with _lock:
        if getattr(state, "worklist", None) is not None:
            return state.worklist
        from features.io import load_export
        from features.pit import open_leads

        source = settings.data or str(settings.sample_export)
        export, _ = load_export(source, open_stages=settings.open_stages, skip_bad_rows=True)
        as_of = export.exported_at
        teams = export.reps.set_index("owner_id")["team"] if export.reps is not None and "team" in export.reps else pd.Series(dtype=object)
        parts, missing = [], []
        lead_model = state.models.get(Task.LEAD_QUALITY.value)
        if lead_model is not None:
            leads = open_leads(export.leads, max(as_of, lead_model.scorer.trained_until))
            s = lead_model.scorer.score(leads, export.accounts, export.activities,
                                        max(as_of, lead_model.scorer.trained_until), n_reasons=3)
            parts.append(pd.DataFrame({"kind": "lead", "id": s["lead_id"], "score": s["probability"],
                                       "expected_value": s["expected_value"],
                                       "owner_id": s["lead_id"].map(leads.set_index("lead_id")["owner_id"]).to_numpy(),
                                       "reasons": [[x["text"] for x in r] for r in s["reasons"]]}))
        else:
            missing.append("leads: no lead_quality model loaded")
        hv = state.models.get(Task.HIGH_VALUE.value)
        if hv is not None:
            opps = export.opportunities
            active = opps[opps["outcome"] == "open"]["account_id"].dropna().unique().tolist()
            if active:
                s = hv.scorer.score(export, active, as_of, n_reasons=3)
                owner = opps[opps["outcome"] == "open"].drop_duplicates("account_id").set_index("account_id")["owner_id"]
                parts.append(pd.DataFrame({"kind": "account", "id": s["account_id"], "score": s["probability"],
                                           "expected_value": s["expected_value"] * s["probability"],
                                           "owner_id": s["account_id"].map(owner).to_numpy(),
                                           "reasons": [[x["text"] for x in r] for r in s["reasons"]]}))
        else:
            missing.append("accounts: no high_value model loaded (run `funnelcast train-accounts`)")
        deal_model = state.models.get(Task.STAGE_CONVERSION.value)
        if deal_model is not None:
            from models.deals import score_open_deals

            s, opps = score_open_deals(export, deal_model.scorer, as_of, n_reasons=3)
            owner = opps.drop_duplicates("opportunity_id").set_index("opportunity_id")["owner_id"]
            parts.append(pd.DataFrame({"kind": "deal", "id": s["opportunity_id"], "score": s["p_win"],
                                       "expected_value": s["expected_value"].astype(float).fillna(0.0),
                                       "owner_id": s["opportunity_id"].map(owner).to_numpy(),
                                       "reasons": [[f"Stage {st}, amount {amt:,.0f}"
                                                    + (" (predicted)" if pred else "") + f": P(won) {p:.0%}"]
                                                   + [x["text"] for x in r]
                                                   for st, amt, pred, p, r in zip(s["stage"], s["amount"],
                                                                                   s["amount_predicted"], s["p_win"],
                                                                                   s["reasons"])]}))
        else:
            reason = state.load_errors.get(Task.STAGE_CONVERSION.value, "run `funnelcast train-deals`")
            missing.append(f"deals: no stage_conversion model loaded ({reason})")
        frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
            columns=["kind", "id", "score", "expected_value", "owner_id", "reasons"])
        frame["team"] = frame["owner_id"].map(teams) if len(teams) else None
        state.worklist = (frame, as_of.isoformat(), missing)
        return state.worklist


def _text(v: object) -> str | None:
    return v if isinstance(v, str) else None


@router.get("/worklist", response_model=WorklistResponse, responses=_ERRORS)
def worklist(request: Request, settings: SettingsDep,
             owner: Annotated[str | None, Query(description="Only this owner's items")] = None,
             team: Annotated[str | None, Query(description="Only this team's items")] = None,
             limit: Annotated[int, Query(ge=1, le=1000)] = 50,
             effort_lead: Annotated[float, Query(gt=0, le=1000, description="Effort of a lead")] = EFFORT["lead"],
             effort_deal: Annotated[float, Query(gt=0, le=1000, description="Effort of a deal")] = EFFORT["deal"],
             effort_account: Annotated[float, Query(gt=0, le=1000, description="Effort of an account")] = EFFORT["account"],
             ) -> WorklistResponse:
    """The prioritised list over the configured export: open leads (P(converts) x value), open
    deals (P(won) x amount, from the stage_conversion model) and accounts with open deals
    (P(high value) x expected customer value), ranked by expected value per unit of effort
    (default lead 1, deal 2, account 3; set per request), with reasons. A part whose model is
    not loaded is left out and named in ``missing``."""
    frame, as_of, missing = _worklist_frame(request, settings)
    effort = {"lead": effort_lead, "deal": effort_deal, "account": effort_account}
    frame = frame.assign(effort=frame["kind"].map(effort).astype(float))
    frame["value_per_effort"] = frame["expected_value"].astype(float) / frame["effort"]
    frame = frame.sort_values(["value_per_effort", "id"], ascending=[False, True], ignore_index=True)
    owners = sorted({o for o in frame["owner_id"] if isinstance(o, str)})
    teams = sorted({t for t in frame["team"] if isinstance(t, str)})
    if owner is not None and owner not in owners:
        raise RequestProblem(f"unknown owner {owner!r}", [("owner", f"not one of {', '.join(owners[:20])}")])
    view = frame
    if owner:
        view = view[view["owner_id"] == owner]
    if team:
        view = view[view["team"] == team]
    items = [WorkItem(kind=r.kind, id=str(r.id), owner_id=_text(r.owner_id), team=_text(r.team), score=float(r.score),
                      expected_value=float(r.expected_value), effort=float(r.effort),
                      value_per_effort=float(r.value_per_effort), reasons=list(r.reasons))
             for r in view.head(limit).itertuples(index=False)]
    return WorklistResponse(as_of=as_of, items=items, owners=owners, teams=teams, missing=missing)



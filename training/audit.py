"""Leakage audit: which fields of an export give the outcome away.

A CRM export is a snapshot: a field a rep fills in *during or after* follow-up ("Tags",
"Lead Quality", "Rating") sits in the export as if it had been known when the lead arrived,
and a model trained on it looks brilliant and is useless. The contract keeps no history for
such fields, so funnelcast cannot make them point-in-time; it can only find them. Per feature
of the lead model (the same feature frame training uses):

* **single-feature AUC on a time split**: a one-feature model (smoothed rate per category, or
  per decile for numbers; missing is a value) fitted on the earlier snapshots and scored on the
  later ones. A stored field that predicts the outcome almost alone is suspect;
* **fill rate by outcome**: a field filled for most converted leads and few others (or the
  reverse) is typically filled in *because of* the outcome;
* **filled or changed after the outcome**, where the export has timestamps: date-valued custom
  fields holding a day after the lead's conversion or disqualification, and, when the adapter
  wrote ``field_history.csv`` (Salesforce LeadHistory), fields set or changed at or after it.

Features funnelcast computes point-in-time (activity counts, ages, historical rates) are
reported but not flagged: the tests in ``tests/features/test_leads.py`` prove they read nothing
at or after ``as_of``. Suspects are a list of feature names: ``funnelcast train --exclude``
takes them (``funnelcast audit --write-exclude FILE`` writes them one per line), and so does
:class:`~training.train.TrainConfig` (``exclude=report.suspects``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from features.contract import Export
from features.leads import LeadFeatureSpec, lead_snapshots, snapshot_times
from models.folds import InvalidFold, Split, TimeFold

_MISSING = "(missing)"
_PRIOR = 20.0


@dataclass(frozen=True)
class AuditThresholds:
    """When a stored field becomes a suspect (all configurable from the CLI)."""

    auc: float = 0.80  # single-feature AUC on the later window
    fill_gap: float = 0.25  # |fill rate among converted - among not converted|
    after_share: float = 0.05  # share of decided leads with the field set/changed after the outcome
    min_rows: int = 30  # fewer positives or negatives than this: no verdict


@dataclass
class FeatureFinding:
    feature: str
    kind: str  # categorical / numeric
    stored: bool  # a field stored in the export (no history); False = computed point-in-time
    auc: float
    fill_converted: float
    fill_other: float
    after_outcome: float | None = None  # share of decided leads, from timestamps; None = not checkable
    reasons: list[str] = field(default_factory=list)

    @property
    def suspect(self) -> bool:
        return bool(self.reasons)


@dataclass
class AuditReport:
    findings: list[FeatureFinding]
    split: dict[str, str]
    notes: list[str]

    @property
    def suspects(self) -> list[str]:
        return [f.feature for f in self.findings if f.suspect]

    def table(self) -> pd.DataFrame:
        rows = [
            {
                "feature": f.feature,
                "suspect": "LEAK?" if f.suspect else "",
                "auc": f.auc,
                "fill_conv": f.fill_converted,
                "fill_other": f.fill_other,
                "after_outcome": f.after_outcome,
                "stored": f.stored,
                "reason": "; ".join(f.reasons),
            }
            for f in self.findings
        ]
        return pd.DataFrame(rows)

    def to_json(self) -> str:
        return json.dumps(
            {
                "suspects": self.suspects,
                "split": self.split,
                "notes": self.notes,
                "features": [{**asdict(f), "suspect": f.suspect} for f in self.findings],
            },
            indent=2,
            default=lambda v: None if isinstance(v, float) and not np.isfinite(v) else str(v),
        )


# --------------------------------------------------------------------------------------------
# one-feature models
# --------------------------------------------------------------------------------------------


def _keys(values: pd.Series, numeric: bool, edges: np.ndarray | None) -> np.ndarray:
    if numeric:
        v = values.to_numpy(dtype=float, na_value=np.nan)
        codes = np.searchsorted(edges, v, side="right").astype(object) if edges is not None else v.astype(object)
        codes[np.isnan(v)] = _MISSING
        return codes
    return values.astype("str").where(values.notna(), _MISSING).to_numpy(dtype=object)


def single_feature_auc(fit: pd.Series, y_fit: np.ndarray, later: pd.Series, y_later: np.ndarray, numeric: bool) -> float:
    """AUC on ``later`` of a one-feature model fitted on ``fit``: the smoothed outcome rate of the
    feature's value (categories) or decile (numbers, fit-window edges); missing is its own value."""
    if len(np.unique(y_later)) < 2 or not len(fit):
        return float("nan")
    edges = None
    if numeric:
        v = fit.to_numpy(dtype=float, na_value=np.nan)
        v = v[~np.isnan(v)]
        edges = np.unique(np.quantile(v, np.linspace(0.1, 0.9, 9))) if len(v) else np.array([])
    prior = float(np.mean(y_fit))
    frame = pd.DataFrame({"k": _keys(fit, numeric, edges), "y": y_fit})
    g = frame.groupby("k")["y"]
    rate = (g.sum() + _PRIOR * prior) / (g.count() + _PRIOR)
    score = pd.Series(_keys(later, numeric, edges)).map(rate).fillna(prior).to_numpy(dtype=float)
    return float(roc_auc_score(y_later, score))


def _fill(values: pd.Series, mask: np.ndarray) -> float:
    return float(values[mask].notna().mean()) if mask.any() else float("nan")


# --------------------------------------------------------------------------------------------
# timestamps: filled or changed after the outcome
# --------------------------------------------------------------------------------------------


def _outcome_at(leads: pd.DataFrame) -> pd.Series:
    """When each lead was decided (converted or disqualified), indexed by lead_id."""
    decided = leads["converted_at"].where(leads["converted_at"].notna(), leads["disqualified_at"])
    return pd.Series(decided.to_numpy(), index=pd.Index(leads["lead_id"]))


def _date_values(values: pd.Series) -> pd.Series | None:
    """A text custom field whose values are (at least 90%) ISO dates, as UTC timestamps; else None."""
    if pd.api.types.is_numeric_dtype(values) or values.notna().sum() == 0:
        return None
    parsed = pd.to_datetime(values, format="ISO8601", utc=True, errors="coerce")
    if parsed.notna().sum() < 0.9 * values.notna().sum():
        return None
    return parsed


def date_after_outcome(leads: pd.DataFrame, column: str) -> float | None:
    """Share of decided leads, with ``column`` filled, whose ``column`` holds a day after their outcome."""
    dates = _date_values(leads[column])
    if dates is None:
        return None
    outcome = _outcome_at(leads).to_numpy()
    ok = pd.notna(outcome) & dates.notna().to_numpy()
    if not ok.any():
        return None
    later = dates.dt.normalize().to_numpy()[ok] > pd.DatetimeIndex(outcome[ok]).normalize().to_numpy()
    return float(later.mean())


def changed_after_outcome(leads: pd.DataFrame, history: pd.DataFrame) -> dict[str, float]:
    """Per field in ``history`` (rows of ``record_table == "leads"``): share of decided leads with a
    change of that field at or after their outcome."""
    h = history[history["record_table"] == "leads"]
    outcome = _outcome_at(leads).dropna()
    if h.empty or outcome.empty:
        return {}
    h = h.assign(outcome_at=h["record_id"].map(outcome)).dropna(subset=["outcome_at"])
    after = h[h["changed_at"] >= h["outcome_at"]]
    n = len(outcome)
    return {str(f): float(after.loc[after["field"] == f, "record_id"].nunique() / n) for f in h["field"].unique()}


# --------------------------------------------------------------------------------------------
# the audit
# --------------------------------------------------------------------------------------------


def _time_split(times: list[pd.Timestamp], horizon_days: int, every_days: int, later_share: float) -> tuple[Split, str]:
    """The time fold's split of the snapshot times: the later window is their latest ``later_share``,
    the earlier one ends a horizon before it so no earlier label looks into it (adjacent, and said
    so, when the history is too short for the gap)."""
    k = max(1, int(round(len(times) * later_share)))
    evaluate = times[-1] - times[-k] + pd.Timedelta(days=1)
    try:
        return TimeFold(horizon=horizon_days, evaluate=evaluate, calibrate=every_days).split(times), ""
    except InvalidFold:
        adjacent = TimeFold(horizon="1d", evaluate=evaluate, calibrate=every_days).split(times)
        return adjacent, "history too short for a horizon-long gap between the windows; windows are adjacent"


@dataclass
class _Evidence:
    """What every feature's finding is computed from: the two windows, all snapshots, the timestamps."""

    fit: pd.DataFrame
    y_fit: np.ndarray
    ev: pd.DataFrame
    y_ev: np.ndarray
    snaps: pd.DataFrame
    y_all: np.ndarray
    verdict: bool  # enough of both classes in the later window for a verdict on AUC and fill rates
    stored: set[str]
    dated: dict[str, float | None]
    changed: dict[str, float]


def _finding(name: str, numeric: bool, e: _Evidence, thresholds: AuditThresholds) -> FeatureFinding:
    """One feature's figures and, for a stored field, the reasons it is a suspect."""
    dated = e.dated.get(name)
    f = FeatureFinding(
        feature=name,
        kind="numeric" if numeric else "categorical",
        stored=name in e.stored,
        auc=single_feature_auc(e.fit[name], e.y_fit, e.ev[name], e.y_ev, numeric),
        fill_converted=_fill(e.snaps[name], e.y_all),
        fill_other=_fill(e.snaps[name], ~e.y_all),
        after_outcome=dated if dated is not None else e.changed.get(name),
    )
    if f.stored and e.verdict:
        if np.isfinite(f.auc) and f.auc >= thresholds.auc:
            f.reasons.append(f"predicts the outcome alone: AUC {f.auc:.2f} on the later window")
        gap = f.fill_converted - f.fill_other
        if np.isfinite(gap) and abs(gap) >= thresholds.fill_gap:
            f.reasons.append(f"filled for {f.fill_converted:.0%} of converted leads vs {f.fill_other:.0%} of the others")
    if f.stored and f.after_outcome is not None and f.after_outcome >= thresholds.after_share:
        src = "holds a date after the outcome" if dated is not None else "set or changed at/after the outcome"
        f.reasons.append(f"{src} for {f.after_outcome:.0%} of decided leads")
    return f


def stored_fields(spec: LeadFeatureSpec) -> list[str]:
    """The lead model's features that are fields stored in the export (the lead's and its account's, custom
    fields included), as against those funnelcast computes point-in-time: the ones that can leak."""
    return [*spec.lead_categoricals, *spec.lead_numerics,
            *(f"account_{c}" for c in (*spec.account_categoricals, *spec.account_numerics))]


def audit_leads(
    export: Export,
    *,
    cutoff: pd.Timestamp | None = None,
    horizon_days: int = 91,
    snapshot_every_days: int = 14,
    warmup_days: int = 30,
    later_share: float = 0.3,
    thresholds: AuditThresholds = AuditThresholds(),
    field_history: pd.DataFrame | None = None,
    synthetic: tuple[str, ...] | list[str] = (),
    progress: bool = False,
) -> AuditReport:
    """Audit every feature of the lead model on ``export`` (see the module docstring).

    ``synthetic`` lists the export's synthetic timestamp columns (from the import's
    ``IMPORT.json``): the split is then stated as a record-order split.
    """
    cutoff = cutoff if cutoff is not None else export.exported_at
    if cutoff is None or export.leads.empty:
        raise ValueError("the export has no leads to audit")
    h = pd.Timedelta(days=horizon_days)
    start = export.leads["created_at"].min() + pd.Timedelta(days=warmup_days)
    times = snapshot_times(start, cutoff - h, snapshot_every_days)
    if len(times) < 2:
        raise ValueError(f"history too short to audit: leads from {export.leads['created_at'].min()} to {cutoff}, "
                         f"horizon {horizon_days} days")
    spec = LeadFeatureSpec.from_export(export, horizon_days=horizon_days, as_of=cutoff)
    snaps = lead_snapshots(export, times, spec, progress=progress)
    split, note = _time_split(times, horizon_days, snapshot_every_days, later_share)
    earlier, later = split.fit + split.calibrate, split.evaluate
    notes = [note] if note else []
    synthetic = list(synthetic)
    if "leads.created_at" in synthetic:
        notes.append("created_at is synthetic (record order): the time split is a record-order split")
    fit, ev = snaps[snaps["as_of"].isin(earlier)], snaps[snaps["as_of"].isin(later)]
    y_fit, y_ev = fit["label"].to_numpy(), ev["label"].to_numpy()
    y_all = snaps["label"].to_numpy(dtype=bool)
    verdict = min(y_ev.sum(), (1 - y_ev).sum()) >= thresholds.min_rows

    stored = set(stored_fields(spec))
    categorical = set(spec.categorical_features)
    leads = export.leads
    dated = {c: date_after_outcome(leads, c) for c in spec.lead_categoricals if c in leads}
    changed = changed_after_outcome(leads, field_history) if field_history is not None else {}
    has_time = "leads.created_at" not in synthetic
    if not any(v is not None for v in dated.values()) and not changed:
        notes.append("no field timestamps in this export (no date-valued fields, no field_history.csv): "
                     "filled-after-outcome cannot be checked; AUC and fill rates only")
    elif not has_time:
        notes.append("timestamps are synthetic: filled-after-outcome checks compare against synthetic outcomes")

    evidence = _Evidence(fit, y_fit, ev, y_ev, snaps, y_all, verdict, stored, dated, changed)
    findings = [_finding(name, name not in categorical, evidence, thresholds)
                for name in tqdm(spec.feature_names, desc="audit features", disable=not progress, unit="feature")]
    if not verdict:
        notes.append(f"fewer than {thresholds.min_rows} converted or unconverted snapshots in the later window: "
                     "AUC and fill rates are shown without a verdict")
    findings.sort(key=lambda f: (not f.suspect, -(f.auc if np.isfinite(f.auc) else 0.0)))
    split = {
        "earlier": f"{earlier[0].date()}..{earlier[-1].date()} ({len(fit)} snapshots rows)",
        "later": f"{later[0].date()}..{later[-1].date()} ({len(ev)} snapshot rows)",
        "order": "record order (synthetic timestamps)" if not has_time else "time",
    }
    return AuditReport(findings=findings, split=split, notes=notes)


#: A stored field whose one-feature model ranks the evaluation window at least this well is named by
#: `funnelcast train` as a probable leak (stricter than the audit's suspicion: a warning, not a verdict).
TRAIN_LEAK_AUC = 0.95


def leak_warnings(fit: pd.DataFrame, y_fit: np.ndarray, later: pd.DataFrame, y_later: np.ndarray,
                  columns: list[str], categorical: set[str] | list[str] | tuple[str, ...],
                  threshold: float = TRAIN_LEAK_AUC) -> list[str]:
    """The warnings `funnelcast train` prints for the stored ``columns`` whose one-feature model
    (:func:`single_feature_auc`, fitted on ``fit``) ranks ``later`` at ROC AUC ``threshold`` or more:
    a field that predictive on its own is, in a CRM export, nearly always filled in because of the
    outcome, and a model trained on it looks brilliant and is useless."""
    found = {}
    for c in columns:
        if c not in fit or c not in later:
            continue
        auc = single_feature_auc(fit[c], y_fit, later[c], y_later, c not in categorical)
        if np.isfinite(auc) and auc >= threshold:
            found[c] = auc
    if not found:
        return []
    names = sorted(found, key=lambda c: -found[c])
    which = ", ".join(f"{c} {found[c]:.3f}" for c in names)
    one = len(names) == 1
    return [f"possible leak: {'this stored field' if one else f'{len(names)} stored fields'} alone "
            f"rank{'s' if one else ''} the evaluation window at ROC AUC {threshold:g} or more ({which}); a field that "
            "predictive is usually filled in because of the outcome; check with `funnelcast audit` and train with "
            f"--exclude {' '.join(names)} if {'it is' if one else 'they are'}"]


def write_exclude(report: AuditReport, path: str | Path) -> Path:
    """The suspects, one per line: ``funnelcast train --exclude $(cat FILE)``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(f"{s}\n" for s in report.suspects))
    return p

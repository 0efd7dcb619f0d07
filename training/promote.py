"""Champion / challenger: move ``@champion`` only when the challenger is better on the same window.

Every ``train`` / ``train-deals`` / ``train-accounts`` registers a version as ``@challenger``
(a first model becomes ``@champion`` directly). :func:`promote` compares the two on the **most recent labelled window** of an
export: the latest ``window_days`` of snapshot times whose label is known (``as_of`` at
most one horizon before the export time), every lead open then, what happened within the
horizon.

Both models must be judged on rows neither has learned from, with the same information:

* **registered** mode: when both models' training cutoffs are at or before the window, the
  registered models themselves score it (exactly what they would have served);
* **refit** mode: otherwise each model's *recipe* (its training config: parameters,
  exclusions, seed) is refitted on the history before the window and scores it. When both
  recipes are identical the challenger differs only by newer data, which a window before
  its cutoff cannot show: it is promoted as the newer fit of the same recipe, and says so.

The challenger is promoted when it is **better by a margin** (ROC AUC up by at least
``auc`` or Brier down by at least ``brier`` relative), **not worse** on the other one
(AUC not down by more than ``auc``, Brier not up) and **not worse calibrated** (calibration
error up by at most ``calibration``). ``stage_conversion`` is compared the same way on the
latest labelled window of deal snapshots, on "won within the horizon" (next-stage and
decided-deal win metrics alongside), and as a timing model also on the **forecast's WAPE by
owner** on that window (expected bookings of the open pipeline within the horizon against
what it booked): the challenger must not be worse by more than ``wape``; see
:func:`compare_deal_models` and :func:`owner_forecast_accuracy`. ``high_value`` is compared
on P(high value) over the latest customers: see :func:`compare_account_models`. The figures
and the decision go to MLflow (a ``promote`` run; tags on the challenger's version) and are
printed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from features.contract import Export
from features.errors import FunnelcastError, ModelNotAvailable
from features.leads import converted_within_horizon, snapshot_times
from features.pit import open_leads
from models.metrics import classification_metrics
from models.registry import load_scorer
from models.scorer import LeadScorer
from models.tasks import Task
from training.train import TrainConfig, build_lead_model

COMPARED = ("roc_auc", "brier", "calibration_error", "log_loss", "pr_auc", "top_decile_capture", "n", "positive_rate",
            "wape", "bias")


@dataclass(frozen=True)
class Margins:
    auc: float = 0.002
    brier: float = 0.01
    calibration: float = 0.005
    wape: float = 0.02  # timing models: largest increase of the forecast's WAPE by owner accepted


@dataclass
class Decision:
    task: str
    promote: bool
    reason: str
    mode: str
    window: str
    champion_version: str | None
    challenger_version: str | None
    champion: dict[str, float] = field(default_factory=dict)
    challenger: dict[str, float] = field(default_factory=dict)
    margins: Margins = field(default_factory=Margins)
    run_id: str | None = None

    def table(self) -> pd.DataFrame:
        rows = [r for r in COMPARED if r in self.champion or r in self.challenger]
        out = pd.DataFrame(
            {
                f"champion v{self.champion_version}": [self.champion.get(r, np.nan) for r in rows],
                f"challenger v{self.challenger_version}": [self.challenger.get(r, np.nan) for r in rows],
            },
            index=rows,
        )
        out["difference"] = out.iloc[:, 1] - out.iloc[:, 0]
        return out


def decide(champion: dict[str, float], challenger: dict[str, float], margins: Margins) -> tuple[bool, str]:
    """The promotion rule on two metric dicts (see the module docstring)."""
    d_auc = challenger["roc_auc"] - champion["roc_auc"]
    brier_change = (challenger["brier"] - champion["brier"]) / champion["brier"]
    d_cal = challenger["calibration_error"] - champion["calibration_error"]
    figures = f"AUC {d_auc:+.4f}, Brier {brier_change:+.2%}, calibration error {d_cal:+.4f}"
    d_wape = challenger.get("wape", np.nan) - champion.get("wape", np.nan)
    if "wape" in champion and "wape" in challenger:
        figures += f", forecast WAPE by owner {d_wape:+.4f}"
    if not (np.isfinite(d_auc) and np.isfinite(brier_change)):
        return False, f"metrics undefined on the window ({figures}): one outcome class only"
    if d_cal > margins.calibration:
        return False, f"worse calibrated ({figures}; tolerance {margins.calibration})"
    if d_wape > margins.wape:  # NaN (no WAPE: not a timing model) compares False
        return False, f"worse forecast ({figures}; WAPE tolerance {margins.wape})"
    if d_auc < -margins.auc or brier_change > 0:
        return False, f"worse on AUC or Brier ({figures})"
    if d_auc >= margins.auc or brier_change <= -margins.brier:
        return True, f"better by the margin ({figures}; margins AUC +{margins.auc}, Brier -{margins.brier:.0%})"
    return False, f"not better by the margin ({figures}; margins AUC +{margins.auc}, Brier -{margins.brier:.0%})"


def window_times(export: Export, horizon_days: int, every_days: int, window_days: int, warmup_days: int = 30) -> list[pd.Timestamp]:
    """The latest ``window_days`` of snapshot times whose labels are known at the export time."""
    end = export.exported_at - pd.Timedelta(days=horizon_days)
    start = export.leads["created_at"].min() + pd.Timedelta(days=warmup_days)
    times = snapshot_times(start, end, every_days)
    window = [t for t in times if t > times[-1] - pd.Timedelta(days=window_days)] if times else []
    if not window:
        raise FunnelcastError(f"the export ends {export.exported_at}: no labelled snapshot to compare the models on")
    return window


def window_predictions(scorer: LeadScorer, export: Export, times: list[pd.Timestamp]) -> pd.DataFrame:
    """``lead_id, as_of, label, p``: the scorer on every lead open at each time of the window."""
    parts = []
    for t in times:
        leads = open_leads(export.leads, t)
        if leads.empty:
            continue
        X = scorer.features(leads, export.accounts, export.activities, t)
        label = converted_within_horizon(leads, t, scorer.spec.horizon_days).reindex(X.index)
        parts.append(pd.DataFrame({"lead_id": X.index, "as_of": t, "label": label.to_numpy(), "p": scorer.predict_proba(X)}))
    return pd.concat(parts, ignore_index=True)


def recipe(scorer: LeadScorer) -> TrainConfig:
    """The training config a registered scorer was built with (defaults for older models)."""
    cfg = scorer.metadata.get("train_config")
    if isinstance(cfg, dict):
        known = {k: v for k, v in cfg.items() if k in TrainConfig.__dataclass_fields__}
        known["exclude"] = tuple(known.get("exclude", ()))
        return TrainConfig(**known)
    return TrainConfig(horizon_days=scorer.spec.horizon_days, exclude=tuple(scorer.spec.excluded))


def _version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def promote(
    export: Export,
    client: MlflowClient,
    *,
    task: str = Task.LEAD_QUALITY.value,
    experiment: str = "funnelcast",
    window_days: int = 91,
    every_days: int = 14,
    margins: Margins | None = None,
    champion_alias: str = "champion",
    challenger_alias: str = "challenger",
    dry_run: bool = False,
) -> Decision:
    """Compare ``@challenger`` with ``@champion`` on the latest labelled window; move the alias if it wins."""
    supported = (Task.LEAD_QUALITY.value, Task.STAGE_CONVERSION.value, Task.HIGH_VALUE.value)
    if task not in supported:
        raise FunnelcastError(f"promotion of task {task!r} is not implemented; only {', '.join(supported)}")
    margins = margins or Margins()
    champ_v, chall_v = _version(client, task, champion_alias), _version(client, task, challenger_alias)
    if chall_v is None:
        raise ModelNotAvailable(task, f"no version has the alias {challenger_alias!r}: run `funnelcast train` first")
    if champ_v is None or champ_v == chall_v:
        reason = "no champion yet: the challenger becomes champion" if champ_v is None else "the challenger is the champion already"
        decision = Decision(task, champ_v is None, reason, "none", "", champ_v, chall_v, margins=margins)
    else:
        champ = load_scorer(client, task, champion_alias).scorer
        chall = load_scorer(client, task, challenger_alias).scorer
    if champ_v is not None and champ_v != chall_v and task in (Task.STAGE_CONVERSION.value, Task.HIGH_VALUE.value):
        compare = compare_deal_models if task == Task.STAGE_CONVERSION.value else compare_account_models
        mode, window, m_champ, m_chall, same = compare(export, champ, chall, window_days)
        if same:
            newer = chall.trained_until > champ.trained_until
            ok, reason = newer, ("same recipe as the champion, trained on newer data: promoted as its refresh"
                                 if newer else "same recipe and no newer data than the champion: nothing to gain")
        else:
            ok, reason = decide(m_champ, m_chall, margins)
        decision = Decision(task, ok, reason, mode, window, champ_v, chall_v, m_champ, m_chall, margins)
    elif champ_v is not None and champ_v != chall_v:
        times = window_times(export, chall.spec.horizon_days, every_days, window_days)
        window = f"{times[0].date()}..{times[-1].date()} ({len(times)} snapshots)"
        if max(champ.trained_until, chall.trained_until) <= times[0]:
            mode, models = "registered", (champ, chall)
        else:
            mode = "refit"
            r_champ, r_chall = recipe(champ), recipe(chall)
            fit_champ = build_lead_model(export, r_champ, times[0]).scorer
            fit_chall = fit_champ if asdict(r_champ) == asdict(r_chall) else build_lead_model(export, r_chall, times[0]).scorer
            models = (fit_champ, fit_chall)
        preds = [window_predictions(m, export, times) for m in models]
        y = preds[0]["label"].to_numpy()
        m_champ = classification_metrics(y, preds[0]["p"].to_numpy())
        m_chall = classification_metrics(y, preds[1]["p"].to_numpy())
        if mode == "refit" and models[0] is models[1]:
            newer = chall.trained_until > champ.trained_until
            ok, reason = newer, (
                "same recipe as the champion, trained on newer data (up to "
                f"{chall.trained_until.date()} vs {champ.trained_until.date()}): promoted as its refresh"
                if newer else "same recipe and no newer data than the champion: nothing to gain"
            )
        else:
            ok, reason = decide(m_champ, m_chall, margins)
        decision = Decision(task, ok, reason, mode, window, champ_v, chall_v, m_champ, m_chall, margins)
    decision.run_id = _log(client, decision, experiment)
    if decision.promote and not dry_run:
        if champ_v is not None:
            client.set_registered_model_alias(task, f"previous_{champion_alias}", champ_v)
        client.set_registered_model_alias(task, champion_alias, chall_v)
        client.delete_registered_model_alias(task, challenger_alias)
    return decision


def _deal_recipe(scorer: Any) -> Any:
    from training.deals import DealTrainConfig

    cfg = scorer.metadata.get("train_config") if isinstance(getattr(scorer, "metadata", None), dict) else None
    if isinstance(cfg, dict):
        known = {k: v for k, v in cfg.items() if k in DealTrainConfig.__dataclass_fields__}
        known["exclude"] = tuple(known.get("exclude", ()))
        return DealTrainConfig(**known)
    return DealTrainConfig(horizon_days=scorer.spec.horizon_days)


def compare_deal_models(
    export: Export, champ: Any, chall: Any, window_days: int = 91
) -> tuple[str, str, dict[str, float], dict[str, float], bool]:
    """Stage-conversion champion vs challenger on the latest labelled window of deal snapshots.

    Compared on "won within the horizon" (plain metric names, as for leads) with the next-stage
    and decided-deal win metrics alongside (``next_*``, ``win_*``). Registered mode when both
    cutoffs are at or before the window; otherwise each recipe is refitted before the window
    the way ``training.deals.build_deal_model`` evaluates. Returns mode, window, champion and
    challenger metrics, and whether the two recipes (hence refits) are the same.
    """
    from features.deals import DealFeatureSpec
    from training.deals import build_snapshots, deal_metrics, evaluation_frame, fit_deal_scorer

    cutoff = export.exported_at
    r_champ, r_chall = _deal_recipe(champ), _deal_recipe(chall)
    h = pd.Timedelta(days=r_chall.horizon_days)
    spec, snaps = build_snapshots(export, cutoff, r_chall)
    last = snaps.loc[snaps["as_of"] + h <= cutoff, "as_of"].max()
    if pd.isna(last):
        raise FunnelcastError(f"the export ends {cutoff}: no labelled deal snapshot to compare the models on")
    start = last - pd.Timedelta(days=window_days) + pd.Timedelta(days=1)
    rows = snaps[(snaps["as_of"] >= start) & (snaps["as_of"] <= last)]
    window = f"{start.date()}..{last.date()} ({rows['as_of'].nunique()} snapshots)"
    same = False
    if max(champ.trained_until, chall.trained_until) <= start:
        mode, models = "registered", (champ, chall)
    else:
        mode = "refit"

        def refit(cfg: Any) -> Any:
            s = DealFeatureSpec.from_export(export, horizon_days=cfg.horizon_days, exclude=cfg.exclude, as_of=start)
            _, sn = build_snapshots(export, cutoff, cfg, spec=s)
            return fit_deal_scorer(export, sn, s, start, cfg, surrogate=False)

        same = asdict(r_champ) == asdict(r_chall)
        fit_champ = refit(r_champ)
        models = (fit_champ, fit_champ if same else refit(r_chall))
    out = []
    for m in models:
        cols = m.spec.feature_names
        # each model's own features for the window rows (a refit or registered spec may differ)
        _, own = build_snapshots(export, cutoff, _deal_recipe(m), spec=m.spec) if cols != spec.feature_names else (spec, snaps)
        own_rows = own[(own["as_of"] >= start) & (own["as_of"] <= last)]
        ev = evaluation_frame(m, own_rows, cutoff)
        metrics, _ = deal_metrics(ev)
        plain = {k.removeprefix("win_h_"): v for k, v in metrics.items() if k.startswith("win_h_")}
        out.append({**plain, **{k: v for k, v in metrics.items() if not k.startswith("win_h_")},
                    **owner_forecast_accuracy(export, ev, own_rows["won_amount"].to_numpy())})
    return mode, window, out[0], out[1], same


def owner_forecast_accuracy(export: Export, ev: pd.DataFrame, won_amount: np.ndarray) -> dict[str, float]:
    """The forecast's accuracy by owner on an evaluation frame of deal snapshots (``ev`` from
    ``training.deals.evaluation_frame``; ``won_amount`` of the same rows, as the export knows it).

    At each snapshot time of the window and for each owner: the expected bookings of the open
    pipeline within the horizon (sum of P(won within the horizon) x amount) against what those
    deals booked within it (the won amount of the deals won within the horizon, as in the
    forecast backtest). ``wape`` = sum |expected - booked| / sum booked over every (time, owner),
    ``bias`` = sum (expected - booked) / sum booked. Deals created later are left out: their
    part of the forecast does not depend on the deal model, so it cannot tell two models apart.
    """
    from models.forecast import group_keys
    from training.backtest import accuracy

    opps = export.opportunities.drop_duplicates("opportunity_id").set_index("opportunity_id")
    owner = group_keys(opps.reindex(ev["opportunity_id"].to_numpy()), export, "owner_id").to_numpy()
    booked = np.where(ev["won_within_horizon"].to_numpy() == 1, np.nan_to_num(np.asarray(won_amount, dtype=float)), 0.0)
    expected = ev["p_win_within_horizon"].to_numpy() * np.nan_to_num(ev["amount_filled"].to_numpy(dtype=float))
    per = pd.DataFrame({"as_of": ev["as_of"].to_numpy(), "owner": owner, "expected": expected, "booked": booked})
    per = per.groupby(["as_of", "owner"], sort=True)[["expected", "booked"]].sum()
    acc = accuracy(per["expected"].to_numpy(), per["booked"].to_numpy())
    return {"wape": acc["wape"], "bias": acc["bias"]}


def _account_recipe(scorer: Any) -> Any:
    from training.accounts import AccountConfig

    meta = scorer.metadata if isinstance(getattr(scorer, "metadata", None), dict) else {}
    cfg = meta.get("train_config")
    if isinstance(cfg, dict):
        return AccountConfig(**{k: v for k, v in cfg.items() if k in AccountConfig.__dataclass_fields__})
    return AccountConfig(window_days=int(meta.get("window_days", 365)), quantile=float(meta.get("quantile", 0.8)),
                         early_days=scorer.spec.early_days)


def compare_account_models(
    export: Export, champ: Any, chall: Any, window_days: int = 91
) -> tuple[str, str, dict[str, float], dict[str, float], bool]:
    """high_value champion vs challenger on the latest customers (snapshots in the last
    ``window_days`` among those whose value is complete at the export time).

    Labels: high value by the challenger recipe's quantile of the values complete at the
    export time, the same for both models. **Registered** mode when neither model had any of
    the window's customers among its training customers (complete at its cutoff); otherwise
    **refit**: each recipe's P(high value) is fitted on the customers before the window (the
    earlier two thirds fit, the later third calibrates) and scores the window. Compared on
    P(high value): AUC, Brier, calibration error.
    """
    from features.customers import AccountFeatureSpec, account_snapshots, customer_value
    from training.accounts import fit_high_value_classifier

    cutoff = export.exported_at
    r_champ, r_chall = _account_recipe(champ), _account_recipe(chall)
    spec = AccountFeatureSpec.from_export(export, early_days=r_chall.early_days, window_days=r_chall.window_days)
    snaps, threshold = account_snapshots(export, cutoff, spec, quantile=r_chall.quantile)
    last = snaps["as_of"].max()
    start = last - pd.Timedelta(days=window_days)
    inside = snaps["as_of"] > start
    rows = snaps[inside]
    if len(rows) < 20 or rows["label"].nunique() < 2:
        raise FunnelcastError(
            f"only {len(rows)} customer(s) ({int(rows['label'].sum())} high value) have their snapshot in the last "
            f"{window_days} days ({start.date()}..{last.date()}): too few to compare the models; pass a larger "
            "--window-days"
        )
    window = f"{rows['as_of'].min().date()}..{last.date()} ({len(rows)} customers)"
    ids = set(rows["account_id"])

    def saw_window(model: Any) -> bool:
        done = customer_value(export.opportunities, model.trained_until, r_chall.window_days)
        return bool(done.index[done["complete"]].isin(list(ids)).any())

    same = False
    if not (saw_window(champ) or saw_window(chall)):
        mode = "registered"
        preds = []
        for m in (champ, chall):
            own = snaps if m.spec.feature_names == spec.feature_names else account_snapshots(
                export, cutoff, m.spec, threshold=threshold)[0]
            preds.append(m.predict_proba(own[inside.to_numpy()][m.spec.feature_names]))
    else:
        mode = "refit"
        same = asdict(r_champ) == asdict(r_chall)
        train = snaps[~inside]
        fits = [fit_high_value_classifier(train, spec, r) for r in ((r_champ,) if same else (r_champ, r_chall))]
        preds = [f.predict_proba(rows[spec.feature_names]) for f in fits]
        preds = preds * 2 if same else preds
    y = rows["label"].to_numpy()
    return mode, window, classification_metrics(y, preds[0]), classification_metrics(y, preds[1]), same


def _log(client: MlflowClient, d: Decision, experiment: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"promote-{d.task}") as run:
        mlflow.set_tags({"task": d.task, "kind": "promotion", "decision": "promote" if d.promote else "keep"})
        mlflow.log_params(
            {
                "champion_version": d.champion_version,
                "challenger_version": d.challenger_version,
                "mode": d.mode,
                "window": d.window,
                "reason": d.reason[:500],
                **{f"margin_{k}": v for k, v in asdict(d.margins).items()},
            }
        )
        for who, metrics in (("champion", d.champion), ("challenger", d.challenger)):
            mlflow.log_metrics({f"{who}_{k}": v for k, v in metrics.items() if np.isfinite(v)})
    if d.challenger_version:
        client.set_model_version_tag(d.task, d.challenger_version, "promotion", "promoted" if d.promote else "kept challenger")
        client.set_model_version_tag(d.task, d.challenger_version, "promotion_reason", d.reason[:500])
    return run.info.run_id


def summary(d: Decision) -> dict[str, Any]:
    return {**asdict(d), "margins": asdict(d.margins)}

"""The high_value task: customer value, high-value traits and the ``high_value`` model.

Examples are customers whose value window is complete before the cutoff, one per account,
with features as of ``first win + early_days`` (see ``features.customers``). The split is a
:class:`~models.folds.TimeFold` over the time of that snapshot, sized to the customers (an
export has hundreds, not a fixed number per day): the latest quarter of the times evaluates,
the quarter before calibrates (early stopping, Platt scaling), the earliest half fits. Each
account appears once, so no account is in two parts and a one-day horizon separates them. The registered model is refitted on the earliest three
quarters and calibrated on the latest quarter. The traits are mined on the same customers'
profiles (firmographics, custom fields, how the account came in) and logged with the model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.contract import Export
from features.customers import AccountFeatureSpec, customer_value
from features.engine import account_snapshots  # the pandas one, or per account partition in a Dask session
from features.errors import FunnelcastError
from models.accounts import AccountScorer, ValueRegressor
from models.candidates import (Candidate, Choice, LogisticClassifier, candidate_table, choose_on_validation,
                               fit_candidate, fit_every, ladder)
from models.drift import reference_profile
from models.estimators import DEFAULT_PARAMS, CalibratedBoostedClassifier, calibrated_contributions
from models.explain import Contributions, log_odds_contributions, shap_summary_plot
from models.folds import Split, TimeFold
from models.metrics import classification_metrics
from models.tasks import Evaluation, Scored, Snapshots, Task, TrainResult, build_task
from models.traits import TraitMiner, global_importance
from training.promote import Check, Window, config_from, reliability, window_label
from training.provenance import export_fingerprint
from training.tune import ProtocolTuning

#: LightGBM settings of P(high value) over the shared defaults (hundreds of customers, not
#: tens of thousands of rows); ``AccountConfig.params`` (e.g. from ``funnelcast tune``) overrides them.
ACCOUNT_PARAMS: dict[str, Any] = {"min_child_samples": 20}
#: The conservative LightGBM rung's rows a leaf for accounts (the ladder's 100 leaves no split on a few hundred).
CONSERVATIVE_ACCOUNT: dict[str, Any] = {"min_child_samples": 40}


@dataclass
class AccountConfig:
    window_days: int = 365
    early_days: int = 28
    quantile: float = 0.8
    n_traits: int = 10
    n_bootstrap: int = 50
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    #: Choose P(high value) on the validation customers (False: LightGBM with ``params``, as before the ladder).
    choose: bool = True


@dataclass(kw_only=True)
class AccountResult(TrainResult):
    scorer: AccountScorer
    traits: pd.DataFrame
    importance: pd.DataFrame
    extra: dict = field(default_factory=dict)


def profile_columns(spec: AccountFeatureSpec) -> list[str]:
    """What traits are mined over: who the customer is and how it came in (targetable in prospects)."""
    return [*spec.account_categoricals, *spec.account_numerics,
            *(f"lead_{c}" for c in spec.lead_categoricals), *(f"lead_{c}" for c in spec.lead_numerics)]


def mine_traits(snaps: pd.DataFrame, spec: AccountFeatureSpec, cfg: AccountConfig) -> TraitMiner:
    """High-value traits of the customers in ``snaps`` (see ``models.traits``)."""
    miner = TraitMiner(n_traits=cfg.n_traits, n_bootstrap=cfg.n_bootstrap, random_state=cfg.seed)
    return miner.fit(snaps[profile_columns(spec)], snaps["value"].to_numpy(), snaps["label"].to_numpy())


def customer_fold(times: pd.Series) -> TimeFold:
    """The fold of the customers' snapshot days ``times``: evaluate the latest quarter of them, calibrate
    on the quarter before, fit on the earliest half (a one-day horizon: each account appears once)."""
    ts = pd.Series(sorted(times))
    last, q75, q50 = ts.iloc[-1], ts.iloc[int(len(ts) * 0.75)], ts.iloc[int(len(ts) * 0.5)]
    evaluate = (last.normalize() - q75.normalize()).days + 1
    return TimeFold(horizon="1d", evaluate=f"{evaluate}d", calibrate=f"{max((q75 - q50).days, 1)}d")


#: The task's own baseline: the first deal's amount alone (``baseline_first_deal``), the simplest rung of
#: the ladder (a one-field logistic regression, so its probabilities are calibrated like the others').
FIRST_DEAL = "first_deal"
#: The feature the first-deal baseline reads.
FIRST_DEAL_FIELD = "first_deal_amount"


class TooFewCustomers(FunnelcastError, ValueError):
    """Too few customers with a complete value window for high_value's time split; names the counts."""


def _require_customers(n: int, enough: bool = True) -> None:
    """Refuse fewer than 80 customers (or a split of them without ``enough`` in each part)."""
    if n < 80 or not enough:
        raise TooFewCustomers(f"only {n} customers with a complete value: too few for a time split (need 80, and "
                              "at least 20 fitting and 10 calibrating and evaluating); train on a longer export")


def _days(snaps: pd.DataFrame) -> pd.Series:
    return snaps["as_of"].dt.normalize()


def _parts(snaps: pd.DataFrame, split: Split) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The fit, calibration and evaluation customers of ``split`` (whose times are days); refuses too few."""
    days = _days(snaps)
    parts = tuple(snaps[days.isin(ts).to_numpy()] for ts in (split.fit, split.calibrate, split.evaluate))
    _require_customers(len(snaps), enough=min(len(p) for p in parts) >= 10 and len(parts[0]) >= 20)
    return parts  # type: ignore[return-value]


def _split(snaps: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Fit, calibration and evaluation customers of :func:`customer_fold` (each sorted by ``as_of``)."""
    _require_customers(len(snaps))
    days = _days(snaps)
    return _parts(snaps, customer_fold(days).split(days))


def fit_high_value_classifier(train: pd.DataFrame, spec: AccountFeatureSpec, cfg: AccountConfig,
                              cal: pd.DataFrame | None = None) -> CalibratedBoostedClassifier:
    """P(high value) fitted on ``train`` (sorted by ``as_of``): its earlier two thirds fit the trees,
    the later third calibrates (early stopping, Platt scaling), unless ``cal`` is given."""
    if cal is None:
        cut = int(len(train) * 2 / 3)
        train, cal = train.iloc[:cut], train.iloc[cut:]
    cols = spec.feature_names
    return CalibratedBoostedClassifier(spec.categorical_features, params={**ACCOUNT_PARAMS, **cfg.params},
                                       random_state=cfg.seed).fit(train[cols], train["label"].to_numpy(), cal[cols],
                                                                  cal["label"].to_numpy())


def _rungs(spec: AccountFeatureSpec, cfg: AccountConfig) -> list:
    """The ladder of ``models.candidates`` with high_value's LightGBM settings, after the task's own baseline
    as a model (:data:`FIRST_DEAL`: the first deal's amount alone in a logistic regression, calibrated like
    every rung) when that field is a feature."""
    rungs = ladder(spec.categorical_features, {**ACCOUNT_PARAMS, **cfg.params}, cfg.seed,
                   conservative=CONSERVATIVE_ACCOUNT)
    if FIRST_DEAL_FIELD not in spec.feature_names:
        return rungs
    first = Candidate(FIRST_DEAL, "baseline",
                      lambda: LogisticClassifier((), random_state=cfg.seed, columns=(FIRST_DEAL_FIELD,)))
    return [first, *rungs]


@dataclass
class AccountModels:
    """A fold's models: every candidate fitted on the fit customers, what validation chose, the value regressor."""

    models: dict[str, Any]
    choice: Choice | None
    roles: dict[str, str]
    regressor: ValueRegressor | None
    validation: str = ""
    #: The candidate used when nothing was chosen: with too few customers before the evaluation window to
    #: validate on, the regularised logistic regression; LightGBM when choice is off.
    fallback: str = "logistic"

    @property
    def name(self) -> str:
        return self.choice.name if self.choice else self.fallback

    @property
    def chosen(self) -> Any:
        return self.models[self.name]


def _choose(rows: pd.DataFrame, spec: AccountFeatureSpec, cfg: AccountConfig) -> tuple[Choice | None, str]:
    """The candidate, history and weighting chosen on the latest quarter of ``rows`` (the customers before
    the evaluation window: :func:`customer_fold` of them), or None and why when they are too few for it
    (or choice is off)."""
    if not cfg.choose:
        return None, "off: LightGBM, unchosen"
    days = _days(rows)
    try:
        fit, cal, val = _parts(rows, customer_fold(days).split(days))
    except FunnelcastError as exc:
        return None, f"no validation window ({exc}): the regularised logistic regression, unchosen"
    cutoff = val["as_of"].min().normalize()
    choice = choose_on_validation(_rungs(spec, cfg), fit, cal, val, spec.feature_names, cutoff)  # one row a customer
    return choice, f"{val['as_of'].min().date()}..{val['as_of'].max().date()} ({len(val)})"


def _fit_chosen(train: pd.DataFrame, cal: pd.DataFrame, spec: AccountFeatureSpec, cfg: AccountConfig,
                choice: Choice | None, name: str, cutoff: pd.Timestamp) -> Any:
    """The candidate ``name`` (chosen in ``choice``; a blend: with its members) fitted on ``train``, calibrated
    on ``cal``."""
    rungs, cols = _rungs(spec, cfg), spec.feature_names
    if choice is None:
        rung = next(r for r in rungs if r.name == name)
        return fit_candidate(rung, train[cols], train["label"].to_numpy(), cal[cols], cal["label"].to_numpy())
    return fit_every(rungs, choice, train, cal, cols, cutoff, only_chosen=True)[name]


def _unchosen(cfg: AccountConfig) -> str:
    """The candidate used without a choice: LightGBM when choice is off, else the logistic regression."""
    return "logistic" if cfg.choose else "lgbm"


def fit_high_value_ladder(train: pd.DataFrame, spec: AccountFeatureSpec, cfg: AccountConfig,
                          cutoff: pd.Timestamp) -> Any:
    """P(high value) as training makes it, from the customers of ``train`` alone (those before ``cutoff``):
    the candidate, history and weighting chosen on the latest of them (:func:`_choose`, the ladder of
    :mod:`models.candidates`), then fitted on their earlier two thirds and calibrated on the later third.
    What promotion refits, so a recipe whose winner was naive Bayes or the logistic regression is refitted
    as that, not as LightGBM."""
    train = train.sort_values("as_of", kind="stable")
    choice, _ = _choose(train, spec, cfg)
    cut = int(len(train) * 2 / 3)
    name = choice.name if choice else _unchosen(cfg)
    return _fit_chosen(train.iloc[:cut], train.iloc[cut:], spec, cfg, choice, name, cutoff)


def build_high_value_model(export: Export, cfg: AccountConfig, cutoff: pd.Timestamp, progress: bool = False) -> AccountResult:
    """Snapshots, traits, the time-split evaluation and the final scorer (no MLflow)."""
    return build_task(HIGH_VALUE, export, cutoff, cfg, progress=progress)  # type: ignore[return-value]


def _final_account_scorer(export: Export, snapshots: Snapshots, split: Split, cfg: AccountConfig,
                          models: AccountModels) -> tuple[AccountScorer, pd.DataFrame, pd.DataFrame, Contributions]:
    """The registered scorer (the chosen candidate refitted on the fit and calibration customers with the
    chosen history and weighting, calibrated on the evaluation ones; value on every customer), its global
    importance, the traits table and the SHAP contributions."""
    snaps, spec, cutoff = snapshots.frame, snapshots.spec, snapshots.cutoff
    cols = spec.feature_names
    fit, cal, ev = _parts(snaps, split)
    # what the final fit may know: the customers up to the last calibrating one
    final = _fit_chosen(pd.concat([fit, cal]), ev, spec, cfg, models.choice, models.name,
                        ev["as_of"].max() + pd.Timedelta(days=1))
    final_reg = ValueRegressor(spec.categorical_features, random_state=cfg.seed).fit(snaps[cols],
                                                                                     snaps["value"].to_numpy())
    contrib = log_odds_contributions(calibrated_contributions(final, final.contributions(snaps[cols])), cols)
    importance = global_importance(contrib.values, snaps[cols], cols)
    miner = mine_traits(snaps, spec, cfg)
    threshold = snapshots.extra["threshold"]
    scorer = AccountScorer(
        spec=spec, classifier=final, regressor=final_reg, threshold=threshold, trained_until=cutoff,
        traits=[t.as_dict() for t in miner.traits_], importance=importance.to_dict("records"),
        metadata={"train_from": str(snaps["as_of"].min()), "trained_until": str(cutoff), "customers": len(snaps),
                  "threshold": threshold, "quantile": cfg.quantile, "window_days": cfg.window_days,
                  "train_config": asdict(cfg), "data_fingerprint": export_fingerprint(export),
                  "candidate": models.name,
                  # drift reference (`funnelcast drift --task high_value`): the final model's calibration customers
                  "reference": reference_profile(ev[cols], final.predict_proba(ev[cols]),
                                                 spec.categorical_features)},
    )
    return scorer, importance, miner.table(), contrib


def write_traits_report(result: AccountResult, out: Path) -> list[Path]:
    """The traits table (CSV, JSON), the global importance (CSV) and plots into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "traits.csv", out / "traits.json", out / "importance.csv", out / "traits.png", out / "shap_summary.png"]
    result.traits.to_csv(paths[0], index=False)
    paths[1].write_text(json.dumps({"threshold": result.scorer.threshold, "traits": result.scorer.traits}, indent=2,
                                   default=float) + "\n")
    result.importance.to_csv(paths[2], index=False)
    t = result.traits
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * max(len(t), 1)))
    if len(t):
        y = np.arange(len(t))[::-1]
        ax.barh(y, t["heldout_lift"], color="#3b7dd8", alpha=0.8)
        ax.errorbar(t["heldout_lift"], y, xerr=[t["heldout_lift"] - t["heldout_low"], t["heldout_high"] - t["heldout_lift"]],
                    fmt="none", ecolor="black", capsize=3)
        ax.set_yticks(y, t["trait"])
        ax.axvline(1.0, color="grey", ls="--")
    ax.set_xlabel("customer value lift on held-out accounts (95% CI)")
    ax.set_title("High-value traits")
    fig.tight_layout()
    fig.savefig(paths[3], dpi=110)
    plt.close(fig)
    cols = result.scorer.spec.feature_names
    shap_summary_plot(result.extra["contributions"], result.snapshots[cols], str(paths[4]))
    return paths


def _tuning_params() -> dict[str, Any]:
    """high_value's LightGBM parameters without tuning."""
    return {**DEFAULT_PARAMS, **ACCOUNT_PARAMS}


class AccountComparison:
    """high_value's promotion: the customers whose snapshot is in the window, among those whose value
    is complete at the export time; high value by the challenger recipe's quantile, the same for both models.
    A refit makes P(high value) the way training does, on the customers before the window
    (:func:`fit_high_value_ladder`: the ladder's candidate chosen on the latest of them, whichever wins)."""

    task = Task.HIGH_VALUE
    checks: tuple[Check, ...] = ()

    def recipe(self, scorer: Any) -> Any:
        meta = scorer.metadata if isinstance(getattr(scorer, "metadata", None), dict) else {}
        return config_from(scorer, AccountConfig, window_days=int(meta.get("window_days", 365)),
                           quantile=float(meta.get("quantile", 0.8)), early_days=scorer.spec.early_days)

    def window(self, export: Export, recipe: Any, evaluate: str | int | pd.Timedelta) -> Window:
        spec = AccountFeatureSpec.from_export(export, early_days=recipe.early_days, window_days=recipe.window_days)
        snaps, threshold = account_snapshots(export, export.exported_at, spec, quantile=recipe.quantile)
        # one snapshot per customer, each value complete at the export: a day apart is enough between windows
        times = TimeFold(horizon="1d", evaluate=evaluate).split(snaps["as_of"]).evaluate
        rows = snaps[snaps["as_of"].isin(times)]
        if len(rows) < 20 or rows["label"].nunique() < 2:
            raise FunnelcastError(
                f"only {len(rows)} customer(s) ({int(rows['label'].sum())} high value) have their snapshot in "
                f"{window_label(times, 'snapshot times')}: too few to compare the models; pass a longer --evaluate"
            )
        return Window(times[0], window_label(times, "customers", len(rows)),
                      (spec, snaps, threshold, recipe.window_days))

    def learned_from(self, export: Export, model: Any, window: Window) -> bool:
        _, snaps, _, window_days = window.data
        ids = snaps.loc[snaps["as_of"] >= window.start, "account_id"]
        done = customer_value(export.opportunities, model.trained_until, window_days)
        return bool(done.index[done["complete"]].isin(list(ids)).any())

    def refit(self, export: Export, recipe: Any, window: Window) -> Any:
        spec, snaps, _, _ = window.data
        return fit_high_value_ladder(snaps[snaps["as_of"] < window.start], spec, recipe, window.start)

    def evaluate(self, export: Export, model: Any, window: Window) -> dict[str, float]:
        spec, snaps, threshold, _ = window.data
        own = getattr(model, "spec", spec)  # a refit is a classifier on the window's features
        if own.feature_names != spec.feature_names:
            snaps = account_snapshots(export, export.exported_at, own, threshold=threshold)[0]
        rows = snaps[snaps["as_of"] >= window.start]
        return classification_metrics(rows["label"].to_numpy(), model.predict_proba(rows[own.feature_names]))


class HighValue:
    """The high_value :class:`~models.tasks.TaskDefinition`: P(an account becomes a high-value customer)."""

    task = Task.HIGH_VALUE
    baseline = "baseline_first_deal"
    floor_metric = "roc_auc"
    # high_value fits on hundreds of customers, not tens of thousands of rows
    tuning = ProtocolTuning(Task.HIGH_VALUE, _tuning_params, (5, 100))
    comparison = AccountComparison()
    drift_population = "accounts known"

    def config(self, *, horizon_days: int, snapshot_every_days: int, seed: int,
               exclude: tuple[str, ...] = ()) -> AccountConfig:
        """Customer value has its own window (``AccountConfig.window_days``): the lead and deal horizon,
        the snapshot step and the excluded lead features do not apply."""
        return AccountConfig(seed=seed)

    def population(self, export: Export, as_of: pd.Timestamp) -> pd.DataFrame:
        return export.accounts[export.accounts["created_at"] < as_of].drop_duplicates("account_id")

    def decision_durations(self, export: Export, cutoff: pd.Timestamp) -> pd.Series:
        """Account created to its first won deal, of the accounts that became customers before ``cutoff``.

        high_value has no label horizon: its label is the value of a customer's first ``window_days``
        (365 by default) after the first win, and its fold has a one-day gap (each account appears
        once), so no horizon is resolved from these. They are what its windows rest on: how long an
        account takes to become a customer, i.e. how late in an export the customers whose value
        window is complete were created (what ``funnelcast train`` can learn from)."""
        accounts = export.accounts.drop_duplicates("account_id").set_index("account_id")["created_at"]
        opps = export.opportunities
        won = opps[(opps["outcome"] == "won") & opps["closed_at"].notna() & (opps["closed_at"] < cutoff)]
        first = won.groupby("account_id")["closed_at"].min()
        created = accounts.reindex(first.index)
        keep = created.notna() & (created < cutoff)
        return pd.Series((first - created)[keep].to_numpy(), index=pd.DatetimeIndex(created[keep]),
                         name="decision_time")

    def snapshots(self, export: Export, cutoff: pd.Timestamp, config: AccountConfig, *, progress: bool = False,
                  outcomes: pd.DataFrame | None = None) -> Snapshots:
        """One snapshot per customer with a complete value window; stored outcomes are lead and deal
        outcomes, which customer value does not read."""
        spec = AccountFeatureSpec.from_export(export, early_days=config.early_days, window_days=config.window_days)
        snaps, threshold = account_snapshots(export, cutoff, spec, quantile=config.quantile, progress=progress)
        times = sorted(set(_days(snaps)))
        return Snapshots(spec=spec, frame=snaps, times=times, cutoff=cutoff, extra={"threshold": threshold})

    def fold(self, config: AccountConfig, snapshots: Snapshots) -> TimeFold:
        _require_customers(len(snapshots.frame))
        return customer_fold(_days(snapshots.frame))

    def fit(self, export: Export, snapshots: Snapshots, split: Split, config: AccountConfig) -> AccountModels:
        """The ladder chosen on the latest customers before the evaluation window, every candidate fitted on
        the fit customers and calibrated on the next; the value regressor on both."""
        spec, cols = snapshots.spec, snapshots.spec.feature_names
        fit, cal, _ = _parts(snapshots.frame, split)
        rows = pd.concat([fit, cal])
        choice, validation = _choose(rows, spec, config)
        rungs = _rungs(spec, config)
        if choice is None:
            models = {r.name: fit_candidate(r, fit[cols], fit["label"].to_numpy(), cal[cols], cal["label"].to_numpy())
                      for r in rungs}
        else:
            models = fit_every(rungs, choice, fit, cal, cols, split.cutoff)
        reg = ValueRegressor(spec.categorical_features, random_state=config.seed).fit(rows[cols],
                                                                                      rows["value"].to_numpy())
        roles = {r.name: r.role for r in rungs} | {"blend": "model", FIRST_DEAL: "baseline"}
        return AccountModels(models, choice, roles, reg, validation, _unchosen(config))

    def evaluate(self, model: AccountModels, snapshots: Snapshots, split: Split, config: AccountConfig) -> Evaluation:
        """Every candidate on the evaluation customers; the chosen one against the first deal's amount alone
        (what a CRM report would sort by; the task's own baseline), and the value."""
        ev = _parts(snapshots.frame, split)[2]
        X, y = ev[snapshots.spec.feature_names], ev["label"].to_numpy()
        preds = {name: m.predict_proba(X) for name, m in model.models.items()}
        metrics = {name: classification_metrics(y, p) for name, p in preds.items()}
        if FIRST_DEAL in metrics:  # the rung: the amount's rank, calibrated
            baseline = metrics[FIRST_DEAL]
        else:  # the field is excluded: the amount's rank as a score (its AUC; no calibrated figure)
            amount = ev[FIRST_DEAL_FIELD].fillna(ev[FIRST_DEAL_FIELD].median()).to_numpy(dtype=float)
            baseline = classification_metrics(y, (amount.argsort().argsort() + 0.5) / len(amount))
        chosen = dict(metrics[model.name])
        pred = model.regressor.predict(X)
        chosen["value_mae"] = float(np.mean(np.abs(pred - ev["value"].to_numpy())))
        chosen["value_spearman"] = float(pd.Series(pred).corr(pd.Series(ev["value"].to_numpy()), method="spearman"))
        frame = ev[["account_id", "as_of", "value", "label"]].assign(
            probability=preds[model.name], expected_value=pred, **{f"p_{n}": p for n, p in preds.items()})
        table = candidate_table(model.choice, model.roles, model.name, {**metrics, FIRST_DEAL: baseline})
        return Evaluation(chosen, baseline, frame, candidates=table, extra={"models": model})

    def final(self, export: Export, snapshots: Snapshots, split: Split, evaluation: Evaluation,
              config: AccountConfig) -> AccountResult:
        models = evaluation.extra["models"]
        scorer, importance, traits, contrib = _final_account_scorer(export, snapshots, split, config, models)
        windows = {name: f"{part['as_of'].min().date()}..{part['as_of'].max().date()} ({len(part)})"
                   for name, part in zip(("fit", "calibrate", "evaluate"), _parts(snapshots.frame, split))}
        windows["validate"] = models.validation
        result = AccountResult(scorer=scorer, metrics=evaluation.metrics, baseline_metrics=evaluation.baseline,
                               snapshots=snapshots.frame, traits=traits, importance=importance,
                               evaluation=evaluation.frame, windows=windows, candidates=evaluation.candidates,
                               extra={"contributions": contrib})
        choice = models.choice
        unchosen = "no window (too few customers before the evaluation ones)" if config.choose else "no window (choice off)"
        result.chosen = choice.params() if choice else {"candidate": models.name, "chosen_on": unchosen}
        note = reliability(evaluation.metrics, "customers")
        if note.small:
            result.warnings.append(note.warning())
        return result

    def run_params(self, result: TrainResult, config: AccountConfig) -> dict[str, object]:
        meta = result.scorer.metadata
        return {**{k: str(v) for k, v in meta.items() if k not in ("train_config", "outcome_labels", "reference")},
                "early_days": config.early_days,
                "calibration": getattr(result.scorer.classifier, "calibration_method_", "platt"),
                **{f"lgbm_{k}": v for k, v in {**DEFAULT_PARAMS, **ACCOUNT_PARAMS, **config.params}.items()}}

    def write_report(self, result: TrainResult, config: AccountConfig, folder: Path) -> None:
        if result.candidates is not None:
            result.candidates.to_csv(folder / "report" / "candidates.csv")
        write_traits_report(result, folder / "traits")  # type: ignore[arg-type]

    def summary(self, result: TrainResult) -> str:
        """The candidates (chosen on the validation customers) on the evaluation customers, and how reliable."""
        m = result.metrics
        text = f"on {len(result.snapshots):,} customers; validation customers {result.windows.get('validate') or 'none'}"
        text += f", evaluation on the latest, who became customers {result.windows['evaluate']}"
        if result.candidates is not None:
            cols = ["role", "chosen", "validation_log_loss", "roc_auc", "brier", "log_loss", "calibration_error"]
            with pd.option_context("display.width", 160):
                text += "\n" + result.candidates[cols].round(4).to_string()
        return (f"{text}\nvalue Spearman {m['value_spearman']:.3f}; "
                f"{reliability(m, 'customers').describe()}")

    def score(self, scorer: AccountScorer, export: Export, as_of: pd.Timestamp, n_reasons: int = 5) -> Scored:
        ids = self.population(export, as_of)["account_id"].astype("str").tolist()
        scored = scorer.score(export, ids, as_of, n_reasons=n_reasons)
        out = scored[["account_id", "probability", "expected_value", "is_customer"]].copy()
        for k in range(n_reasons):
            out[f"reason_{k + 1}"] = [r[k]["text"] if len(r) > k else "" for r in scored["reasons"]]
        return Scored(out.sort_values(["probability", "account_id"], ascending=[False, True], ignore_index=True),
                      "accounts")

    def drift_features(self, scorer: AccountScorer, export: Export, population: pd.DataFrame,
                       as_of: pd.Timestamp) -> tuple[pd.DataFrame, np.ndarray]:
        X = scorer.features(export, list(population["account_id"]), as_of)
        return X, scorer.predict_proba(X)


HIGH_VALUE = HighValue()

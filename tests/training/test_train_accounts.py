"""The high_value model round-trips through MLflow: train -> register with @champion -> load by
alias in a fresh Python process -> the same scores (to 1e-9) and the same traits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

_LOAD = """
import json, sys
import pandas as pd
import pytest
from features.io import load_export
from models.registry import configure, load_scorer

uri, data, account_ids, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
loaded = load_scorer(configure(uri), "high_value", "champion")
export, _ = load_export(data)
s = loaded.scorer.score(export, account_ids, export.exported_at, n_reasons=3)
s["reasons"] = [json.dumps([r["text"] for r in x]) for x in s["reasons"]]
s.to_csv(out, index=False, float_format="%.17g")
print(json.dumps({"version": loaded.version, "traits": [t["trait"] for t in loaded.scorer.traits]}))
"""


def test_high_value_round_trips_through_mlflow_in_a_fresh_process(account_sample, tmp_path):
    from models.registry import configure
    from training.pipeline import log_and_register

    data, export, cfg, result = account_sample
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = configure(uri)
    registered = log_and_register(result, client, experiment="high-value-test",
                                  artifact_location=str(tmp_path / "artifacts"), cfg=cfg, data_source="sample")
    assert sorted(registered.aliases) == ["challenger", "champion"]  # a first model is champion directly
    assert str(client.get_model_version_by_alias("high_value", "champion").version) == result.version
    # prospects and customers alike: every account of the export
    ids = list(export.accounts["account_id"])
    here = result.scorer.score(export, ids, export.exported_at, n_reasons=3)
    out = tmp_path / "scores.csv"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _LOAD, uri, str(data), json.dumps(ids), str(out)], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads(proc.stdout.strip().splitlines()[-1])
    assert meta["version"] == result.version
    assert meta["traits"] == [t["trait"] for t in result.scorer.traits]
    there = pd.read_csv(out, dtype={"account_id": str})
    assert list(there["account_id"]) == list(here["account_id"])
    for col in ("probability", "expected_value", "base_probability"):
        np.testing.assert_allclose(there[col].to_numpy(float), here[col].to_numpy(float), rtol=0, atol=1e-9,
                                   err_msg=col)
    assert [json.loads(r) for r in there["reasons"]] == [[x["text"] for x in r] for r in here["reasons"]]
    # the scores are not constant (a round trip of a degenerate model would prove little)
    assert here["probability"].std() > 0.01


def test_high_value_is_chosen_on_a_validation_quarter_before_the_evaluation_customers(account_sample):
    """The ladder (item 2 of issue 15) for high_value: every candidate on the evaluation customers, one chosen
    on validation customers who all came before them, the baselines where the floor reads them."""
    from training.pipeline import result_baselines, result_floor
    from training.tasks import task_definition

    _, _, _, result = account_sample
    table = result.candidates
    assert {"naive_bayes", "logistic", "lgbm_conservative", "lgbm", "first_deal"} <= set(table.index)
    assert table["chosen"].sum() == 1
    chosen = table.index[table["chosen"]][0]
    assert chosen == result.chosen["candidate"] == result.scorer.metadata["candidate"]
    assert table.loc[chosen, "roc_auc"] == result.metrics["roc_auc"]
    assert set(table.loc[["naive_bayes", "logistic", "first_deal"], "role"]) == {"baseline"}
    # validated before the evaluation customers: the validation window ends before the evaluation one starts
    val_end = result.windows["validate"].split("..")[1][:10]
    assert val_end < result.windows["evaluate"][:10]
    assert table.loc[["naive_bayes", "logistic", "lgbm"], "validation_log_loss"].notna().all()
    # the floor reads every baseline: the first deal's amount and the ladder's two
    assert set(result_baselines(result)) == {"baseline_first_deal", "baseline_naive_bayes", "baseline_logistic"}
    assert result_floor(result).best in result_baselines(result)
    # the summary says how reliable the figures are
    text = task_definition("high_value").summary(result)
    assert "standard error" in text and chosen in text
    # whichever candidate won, the scorer's reasons stay additive and the value regressor reads the frame
    cols = result.scorer.spec.feature_names
    X = result.snapshots[cols].head(50)
    contrib = result.scorer.explain(X)
    p = 1 / (1 + np.exp(-(contrib.base + contrib.values.sum(axis=1))))
    np.testing.assert_allclose(p, result.scorer.predict_proba(X), atol=1e-9)
    assert (result.scorer.expected_value(X) >= 0).all() and result.scorer.expected_value(X).std() > 0


def test_too_few_customers_before_the_evaluation_window_leave_the_logistic_regression_unchosen(account_sample):
    from training.accounts import AccountModels, _choose

    _, _, cfg, result = account_sample
    early = result.snapshots.sort_values("as_of").head(60)  # fewer than the 80 a customer fold needs
    choice, why = _choose(early, result.scorer.spec, cfg)
    assert choice is None and "no validation window" in why and "60 customers" in why
    assert AccountModels({}, None, {}, None, why).name == "logistic"  # type: ignore[arg-type]


def test_promotion_refits_the_candidate_the_ladder_chooses_before_the_window(account_sample):
    """A refit for promotion (issue 15) makes P(high value) the way training does: the ladder's winner on the
    customers before the window, whichever it is (it refitted LightGBM only); with choice off, LightGBM."""
    from dataclasses import replace

    from models.candidates import BlendClassifier, LogisticClassifier, NaiveBayesClassifier
    from models.estimators import CalibratedBoostedClassifier
    from training.accounts import AccountComparison, _choose

    _, export, _, result = account_sample
    comparison = AccountComparison()
    recipe = comparison.recipe(result.scorer)
    assert recipe.choose
    window = comparison.window(export, recipe, "91d")
    spec, snaps, _, _ = window.data
    before = snaps[snaps["as_of"] < window.start].sort_values("as_of", kind="stable")
    choice, _ = _choose(before, spec, recipe)
    kinds = {"naive_bayes": NaiveBayesClassifier, "logistic": LogisticClassifier, "blend": BlendClassifier,
             "lgbm": CalibratedBoostedClassifier, "lgbm_conservative": CalibratedBoostedClassifier,
             "first_deal": LogisticClassifier}
    model = comparison.refit(export, recipe, window)
    assert type(model) is kinds[choice.name if choice else "logistic"]
    if choice is not None and choice.name == "first_deal":  # the one-field baseline reads its field only
        assert model.used_ == ["first_deal_amount"]
    if choice is not None and choice.name == "lgbm_conservative":  # the conservative rung's own settings
        assert model.params["num_leaves"] == 3
    m = comparison.evaluate(export, model, window)
    assert m["n"] >= 20 and 0.5 < m["roc_auc"] <= 1
    off = comparison.refit(export, replace(recipe, choose=False), window)
    assert type(off) is CalibratedBoostedClassifier and off.params.get("num_leaves") != 3


def test_a_refit_takes_whichever_rung_validation_chose(account_sample, monkeypatch):
    """Whatever the validation customers choose (forced here to each baseline in turn) is what is refitted."""
    from dataclasses import replace

    import training.accounts as accounts
    from models.candidates import LogisticClassifier, NaiveBayesClassifier

    _, export, _, result = account_sample
    comparison = accounts.AccountComparison()
    recipe = comparison.recipe(result.scorer)
    window = comparison.window(export, recipe, "91d")
    real = accounts.choose_on_validation
    for name, kind in (("naive_bayes", NaiveBayesClassifier), ("logistic", LogisticClassifier)):
        def forced(*args, _name=name, **kw):
            choice = real(*args, **kw)
            return replace(choice, name=_name, members=(_name,))

        monkeypatch.setattr(accounts, "choose_on_validation", forced)
        assert type(comparison.refit(export, recipe, window)) is kind


def test_the_first_deal_baseline_is_a_calibrated_rung_of_the_ladder(account_sample):
    """The task's own baseline is the best plain version of itself (issue 15, item 5): the first deal's amount
    in a one-field logistic regression, calibrated like every rung and chosen by the same rule (so on a small
    CRM a model no better than the amount is not fielded over it), not the amount's rank read as a probability."""
    from models.candidates import LogisticClassifier
    from models.metrics import classification_metrics
    from training.accounts import FIRST_DEAL, _rungs

    _, _, cfg, result = account_sample
    spec = result.scorer.spec
    rungs = _rungs(spec, cfg)
    assert rungs[0].name == FIRST_DEAL and rungs[0].role == "baseline"  # the simplest rung
    table = result.candidates
    assert np.isfinite(table.loc[FIRST_DEAL, "validation_log_loss"])  # seen by the choice
    ev = result.evaluation
    y = ev["label"].to_numpy()
    amount = result.snapshots.set_index("account_id").loc[ev["account_id"], "first_deal_amount"].to_numpy(dtype=float)
    known = np.isfinite(amount)
    assert known.sum() > 20
    # the amount's own ranking (a positive coefficient on one field; a missing amount is its own level) ...
    p = ev["p_first_deal"].to_numpy()[known]
    assert np.all(np.diff(p[np.argsort(amount[known], kind="stable")]) >= -1e-12)
    amount = np.where(known, amount, np.nanmedian(amount))
    # ... but calibrated: better than the rank read as a probability
    rank = classification_metrics(y, (amount.argsort().argsort() + 0.5) / len(amount))
    assert table.loc[FIRST_DEAL, "log_loss"] < rank["log_loss"] and table.loc[FIRST_DEAL, "brier"] < rank["brier"]
    # one field: every other feature's contribution is zero
    cols = spec.feature_names
    rows = result.snapshots[cols].head(30)
    model = rungs[0].make().fit(result.snapshots[cols], result.snapshots["label"].to_numpy())
    assert isinstance(model, LogisticClassifier) and model.used_ == ["first_deal_amount"]
    contrib = model.contributions(rows)
    others = [i for i, c in enumerate(cols) if c != "first_deal_amount"]
    assert np.all(contrib[:, others] == 0) and contrib[:, cols.index("first_deal_amount")].std() > 0

"""Tests of the sample CRM generator: determinism, the data contract, and the truth.

The truth is checked three ways: it agrees with the export on which entities were open at
each ``as_of``; it is calibrated and discriminates against the simulated outcomes; and its
closed-form posterior matches a brute-force Monte Carlo of the generator's own sampler.
"""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.linalg import expm
from sklearn.metrics import roc_auc_score

from features.contract import DEFAULT_OPEN_STAGES, FOREIGN_KEYS, OUTCOMES, TABLES, normalize_category
from features.io import load_export
from features.pit import open_leads
from features.sample import (
    EXPORTED_AT,
    GRID,
    GRID_PRIOR,
    DealModel,
    LeadModel,
    SampleSummary,
    _deal_generators,
    _deal_posterior,
    _deal_truth,
    _expm,
    _lead_posterior,
    _lead_truth,
    _poisson_times,
    _simulate_deal_paths,
    _simulate_lead_exits,
    generate_sample,
)

T = EXPORTED_AT
FILES = [f"export/{t}.csv" for t in TABLES] + [f"truth/{f}" for f in
         ("leads.csv", "opportunities.csv", "params.json", "traits.json", "README.md")]
TIMESTAMPS = {
    "accounts": ["created_at"],
    "leads": ["created_at", "converted_at", "disqualified_at"],
    "opportunities": ["created_at", "closed_at"],
    "stage_history": ["entered_at"],
    "activities": ["occurred_at"],
}
CUSTOM = {"accounts": ["tech_stack"], "leads": ["budget_k", "campaign"]}


def _read(export_dir: Path) -> dict[str, pd.DataFrame]:
    """The export as raw strings; timestamp columns parsed to UTC, categories normalised."""
    tables = {}
    for name, spec in TABLES.items():
        frame = pd.read_csv(export_dir / f"{name}.csv", dtype=str, keep_default_na=False, na_values=[""])
        for col in TIMESTAMPS.get(name, []):
            frame[col] = pd.to_datetime(frame[col], utc=True, format="ISO8601")
        for c in spec.columns:
            if c.kind == "category" and c.name in frame:
                frame[c.name + "_raw"] = frame[c.name]
                frame[c.name] = normalize_category(frame[c.name])
        tables[name] = frame
    return tables


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SampleSummary]:
    out = tmp_path_factory.mktemp("sample")
    return out, generate_sample(out, seed=7, scale=0.15)


@pytest.fixture(scope="module")
def tables(sample) -> dict[str, pd.DataFrame]:
    return _read(sample[0] / "export")


@pytest.fixture(scope="module")
def truths(tmp_path_factory: pytest.TempPathFactory, sample) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Truth rows pooled over three seeds, so calibration tests have some power."""
    dirs = [sample[0]]
    for seed in (11, 12):
        out = tmp_path_factory.mktemp(f"truth{seed}")
        generate_sample(out, seed=seed, scale=0.15)
        dirs.append(out)
    leads = pd.concat([pd.read_csv(d / "truth/leads.csv").assign(seed=i) for i, d in enumerate(dirs)])
    opps = pd.concat([pd.read_csv(d / "truth/opportunities.csv").assign(seed=i) for i, d in enumerate(dirs)])
    return leads, opps


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path):
    a, b, c = (generate_sample(tmp_path / n, seed=s, scale=0.1) for n, s in (("a", 3), ("b", 3), ("c", 4)))
    for f in FILES:
        assert filecmp.cmp(a.out / f, b.out / f, shallow=False), f
    assert not filecmp.cmp(a.out / "export/leads.csv", c.out / "export/leads.csv", shallow=False)
    assert not filecmp.cmp(a.out / "truth/opportunities.csv", c.out / "truth/opportunities.csv", shallow=False)


def test_layout_and_summary(sample):
    out, summary = sample
    assert {p.name for p in out.iterdir()} == {"export", "truth"}
    assert sorted(p.name for p in (out / "export").iterdir()) == sorted(f"{t}.csv" for t in TABLES)
    for f in FILES:
        assert (out / f).is_file(), f
    assert summary.export_dir == out / "export" and summary.truth_dir == out / "truth"
    assert summary.exported_at == T
    assert summary.row_counts["leads"] == len(pd.read_csv(out / "export/leads.csv"))
    params = json.loads((out / "truth/params.json").read_text())
    assert params["seed"] == 7 and params["scale"] == 0.15 and params["horizon_days"] == 91
    assert pd.Timestamp(params["exported_at"]) == T


def test_bad_arguments_are_named(tmp_path: Path):
    with pytest.raises(ValueError, match="scale"):
        generate_sample(tmp_path, scale=0)


# --------------------------------------------------------------------------- the contract


def test_columns_are_the_contract_plus_custom_fields(tables):
    for name, spec in TABLES.items():
        cols = [c for c in tables[name].columns if not c.endswith("_raw")]
        assert cols == spec.column_names + CUSTOM.get(name, []), name


def test_ids_required_values_and_foreign_keys(tables):
    for name, spec in TABLES.items():
        frame = tables[name]
        for c in spec.columns:
            if c.required:
                assert frame[c.name].notna().all(), (name, c.name)
            if c.unique:
                assert frame[c.name].is_unique, (name, c.name)
            if c.min_value is not None:
                assert (pd.to_numeric(frame[c.name]).dropna() >= c.min_value).all(), (name, c.name)
    for (table, col), (ref, ref_col) in FOREIGN_KEYS.items():
        values = tables[table][col].dropna()
        assert values.isin(tables[ref][ref_col]).all(), (table, col)
    acts = tables["activities"]
    assert acts[["lead_id", "opportunity_id", "account_id"]].notna().any(axis=1).all()
    assert acts["score"].notna().eq(acts["type"] == "survey").all()
    assert tables["leads"]["lead_id"].str.fullmatch(r"L\d{6}").all()
    assert tables["opportunities"]["opportunity_id"].str.fullmatch(r"O\d{6}").all()
    assert tables["accounts"]["account_id"].str.fullmatch(r"A\d{5}").all()
    assert acts["activity_id"].str.fullmatch(r"ACT\d{7}").all()


def test_nothing_at_or_after_export_time(tables, sample):
    for name, cols in TIMESTAMPS.items():
        for col in cols:
            ts = tables[name][col].dropna()
            assert (ts < T).all(), (name, col)
    # timestamps are ISO 8601 with Z, dates YYYY-MM-DD (a close date may lie in the future: it is a plan)
    raw = pd.read_csv(sample[0] / "export/stage_history.csv", dtype=str)
    assert raw["entered_at"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").all()
    assert raw["expected_close_date"].dropna().str.fullmatch(r"\d{4}-\d\d-\d\d").all()


def test_opportunities_are_consistent(tables):
    opps, hist = tables["opportunities"], tables["stage_history"]
    assert set(opps["outcome"]) <= set(OUTCOMES)
    terminal = opps["outcome"] != "open"
    assert (opps.loc[terminal, "stage"] == opps.loc[terminal, "outcome"]).all()
    assert opps.loc[~terminal, "stage"].isin(DEFAULT_OPEN_STAGES).all()
    assert opps["closed_at"].notna().eq(terminal).all()
    assert (opps.loc[terminal, "closed_at"] >= opps.loc[terminal, "created_at"]).all()
    assert set(opps["type"]) == {"new", "upsell", "renewal"}
    assert opps["lead_id"].notna().eq(opps["type"] == "new").all()

    hist = hist.assign(order=np.arange(len(hist)))
    by = hist.groupby("opportunity_id", sort=False)
    assert by["entered_at"].apply(lambda s: s.is_monotonic_increasing).all()
    first, last = by.head(1).set_index("opportunity_id"), by.tail(1).set_index("opportunity_id")
    o = opps.set_index("opportunity_id")
    assert set(first.index) == set(o.index)
    assert (first["stage"] == "qualification").all()
    assert (first["entered_at"] == o.loc[first.index, "created_at"]).all()
    assert (last["stage"] == o.loc[last.index, "stage"]).all()
    closed = o.index[o["outcome"] != "open"]
    assert (last.loc[closed, "entered_at"] == o.loc[closed, "closed_at"]).all()
    # won / lost only as the last row; a deal's current amount and close date are its latest known ones
    not_last = hist[~hist["order"].isin(last["order"])]
    assert not not_last["stage"].isin(["won", "lost"]).any()
    open_ = o.index[o["outcome"] == "open"]
    assert (pd.to_numeric(last.loc[open_, "amount"]).fillna(-1) == pd.to_numeric(o.loc[open_, "amount"]).fillna(-1)).all()
    # close dates get pushed: some open deal's close date is later than at its last stage entry
    pushed = pd.to_datetime(o.loc[open_, "expected_close_date"]) > pd.to_datetime(last.loc[open_, "expected_close_date"])
    assert pushed.any()


def test_leads_are_consistent(tables):
    leads, opps = tables["leads"], tables["opportunities"].set_index("opportunity_id")
    conv = leads["converted_at"].notna()
    assert conv.eq(leads["opportunity_id"].notna()).all()
    assert not (conv & leads["disqualified_at"].notna()).any()
    assert (leads.loc[conv, "converted_at"] >= leads.loc[conv, "created_at"]).all()
    assert (leads["disqualified_at"].dropna() >= leads.loc[leads["disqualified_at"].notna(), "created_at"]).all()
    # auto-disqualification at one year: nobody stays open longer
    assert ((T - leads["created_at"])[leads["converted_at"].isna() & leads["disqualified_at"].isna()] <= pd.Timedelta(days=365)).all()
    c = leads[conv].set_index("opportunity_id")
    assert (opps.loc[c.index, "lead_id"] == c["lead_id"]).all()
    assert (opps.loc[c.index, "created_at"] == c["converted_at"]).all()
    acc = tables["accounts"].set_index("account_id")["created_at"]
    linked = leads[leads["account_id"].notna()]
    assert (acc.loc[linked["account_id"]].to_numpy() <= linked["created_at"].to_numpy()).all()
    assert (acc.loc[opps["account_id"]].to_numpy() <= opps["created_at"].to_numpy()).all()


def test_categories_are_known_after_normalisation_and_some_are_messy(tables):
    leads = tables["leads"]
    assert set(leads["source"].dropna()) == {"web", "referral", "event", "outbound", "partner", "paid_search", "webinar"}
    assert set(leads["seniority"].dropna()) == {"c_level", "vp", "director", "manager", "individual"}
    assert set(tables["accounts"]["industry"].dropna()) >= {"software", "finance", "retail"}
    for col in ("source", "seniority", "country"):
        assert leads[col].isna().any(), col
        raw = leads[col + "_raw"].dropna()
        assert (raw != leads.loc[raw.index, col]).any(), col  # " Web", "REFERRAL " ...
    assert pd.to_numeric(leads["budget_k"]).isna().mean() == pytest.approx(0.5, abs=0.06)


def test_loads_with_the_loader(sample):
    export, report = load_export(sample[0] / "export")
    assert not report, report.summary()
    assert len(export.leads) == sample[1].row_counts["leads"]
    # without a stated export time, the loader takes the latest timestamp: the sample has none at or after T
    tables = (export.accounts, export.leads, export.opportunities, export.stage_history, export.activities)
    latest = max(frame[c].max() for frame in tables for c in frame.columns if c.endswith("_at"))
    assert export.exported_at == latest
    assert T - pd.Timedelta(days=7) < export.exported_at < T


# --------------------------------------------------------------------------- the truth


def test_truth_covers_exactly_the_entities_open_at_each_as_of(tables, sample):
    truth_leads = pd.read_csv(sample[0] / "truth/leads.csv", dtype={"lead_id": str})
    truth_opps = pd.read_csv(sample[0] / "truth/opportunities.csv", dtype={"opportunity_id": str})
    assert sorted(truth_leads["as_of"].unique()) == [
        (T - pd.Timedelta(days=d)).strftime("%Y-%m-%dT%H:%M:%SZ") for d in (273, 182, 91, 0)
    ]
    opps, hist = tables["opportunities"], tables["stage_history"]
    for as_of_str, group in truth_leads.groupby("as_of"):
        as_of = pd.Timestamp(as_of_str)
        assert set(group["lead_id"]) == set(open_leads(tables["leads"], as_of)["lead_id"])
        og = truth_opps[truth_opps["as_of"] == as_of_str].set_index("opportunity_id")
        is_open = (opps["created_at"] < as_of) & ~(opps["closed_at"] < as_of)
        assert set(og.index) == set(opps.loc[is_open, "opportunity_id"])
        stage = hist[hist["entered_at"] < as_of].groupby("opportunity_id")["stage"].last()
        assert (og["stage"] == stage.loc[og.index]).all()
    # at T the open entities' outcomes lie beyond the export: some of them happen
    at_t = truth_leads[truth_leads["as_of"] == truth_leads["as_of"].max()]
    assert at_t["converted_within_horizon"].sum() > 0
    assert truth_opps["p_win"].between(0, 1).all() and truth_opps["p_win_within_horizon"].le(truth_opps["p_win"] + 1e-6).all()


@pytest.mark.parametrize(
    ("table", "p", "y"),
    [
        ("leads", "p_convert_within_horizon", "converted_within_horizon"),
        ("opportunities", "p_win_within_horizon", "won_within_horizon"),
        ("opportunities", "p_next_stage_within_horizon", "next_stage_within_horizon"),
    ],
)
def test_truth_is_calibrated_and_discriminates(truths, table, p, y):
    frame = truths[0] if table == "leads" else truths[1]
    expected, actual = frame[p].sum(), frame[y].sum()
    se = np.sqrt((frame[p] * (1 - frame[p])).sum())
    assert abs(actual - expected) < 4 * se, (expected, actual, se)
    assert roc_auc_score(frame[y], frame[p]) > 0.7


def test_eventual_win_is_calibrated_per_as_of(truths):
    for (_, _), g in truths[1].groupby(["seed", "as_of"]):
        se = np.sqrt((g["p_win"] * (1 - g["p_win"])).sum())
        assert abs(g["won"].sum() - g["p_win"].sum()) < 4 * se + 1


def test_vectorised_expm_equals_scipy():
    rng = np.random.default_rng(2)
    q = _deal_generators(DealModel(), rng.normal(0.0, 1.0, 50)[:, None], GRID[None, :]) * 91.0
    assert np.abs(_expm(q) - expm(q)).max() < 1e-12
    a = rng.normal(size=(20, 4, 4)) * 3.0
    assert np.allclose(_expm(a), expm(a), rtol=1e-10, atol=1e-12)
    assert np.allclose(_expm(np.zeros((2, 3, 3))), np.eye(3))


def test_lead_truth_matches_brute_force_monte_carlo():
    """Condition simulated leads on what is observable at age 20 and compare with the closed form."""
    rng = np.random.default_rng(0)
    m = LeadModel()
    n, age, horizon = 400_000, 20.0, 30.0
    lin = np.full(n, m.alpha_convert + 0.4)
    z = GRID[rng.choice(GRID.size, size=n, p=GRID_PRIOR)]
    exit_age, converted = _simulate_lead_exits(rng, m, lin, z)
    counts = np.zeros((n, len(m.informative)), dtype=int)
    for k, act in enumerate(m.informative):
        idx, off = _poisson_times(rng, act.rate * np.exp(act.effect * z), act.tau, exit_age)
        counts[:, k] = np.bincount(idx[off < age], minlength=n)
    open_at = exit_age >= age
    hit = converted & (exit_age < age + horizon)
    for pattern in ((0, 0, 0), (2, 0, 0), (1, 1, 0), (3, 1, 1)):
        keep = open_at & (counts == pattern).all(axis=1)
        assert keep.sum() > 500, pattern
        mc = hit[keep].mean()
        exact = _lead_truth(m, lin[:1], np.array([age]), np.array([pattern], dtype=float), horizon)[0]
        se = np.sqrt(exact * (1 - exact) / keep.sum())
        assert abs(mc - exact) < 4 * se, (pattern, mc, exact)
        # the posterior itself: the simulated z of the matching leads against the grid posterior
        post = _lead_posterior(m, lin[:1], np.array([age]), np.array([pattern], dtype=float))[0]
        mean, sd = post @ GRID, np.sqrt(post @ GRID**2 - (post @ GRID) ** 2)
        assert abs(z[keep].mean() - mean) < 4 * sd / np.sqrt(keep.sum()), (pattern, z[keep].mean(), mean)
    # the patterns are informative: more inbound activity, more conversions
    p = _lead_truth(m, lin[:2], np.array([age, age]), np.array([[0, 0, 0], [3, 1, 1]], dtype=float), horizon)
    assert p[1] > 2 * p[0]


def test_deal_truth_matches_brute_force_monte_carlo():
    """Deals still in qualification at age 15 with given meeting/call counts: closed form vs simulation."""
    rng = np.random.default_rng(1)
    m = DealModel()
    n, age, horizon = 300_000, 15.0, 60.0
    lin = np.full(n, 0.3)
    w = GRID[rng.choice(GRID.size, size=n, p=GRID_PRIOR)]
    deal, stage, when = _simulate_deal_paths(rng, m, lin, w, np.zeros(n))
    first_move = np.full(n, np.inf)
    moved = np.r_[False, deal[1:] == deal[:-1]]
    np.minimum.at(first_move, deal[moved], when[moved])
    closed = np.zeros(n)
    np.maximum.at(closed, deal, when)
    final = np.zeros(n, dtype=int)
    final[deal] = stage  # sorted by deal then time: the last entry is the final stage
    counts = np.zeros((n, len(m.informative)), dtype=int)
    for k, act in enumerate(m.informative):
        idx, off = _poisson_times(rng, act.rate * np.exp(act.effect * w), None, closed)
        counts[:, k] = np.bincount(idx[off < age], minlength=n)
    in_q = first_move >= age
    proposal_at = np.full(n, np.inf)
    at_p = stage == 1
    np.minimum.at(proposal_at, deal[at_p], when[at_p])
    won = final == 3
    for pattern in ((0, 0), (1, 2), (2, 3)):
        keep = in_q & (counts == pattern).all(axis=1)
        assert keep.sum() > 500, pattern
        exact = _deal_truth(m, lin[:1], np.array([0]), np.array([[age, 0.0, 0.0]]), np.array([0.0]),
                            np.array([pattern], dtype=float), np.array([age]), horizon)
        outcomes = (won[keep], won[keep] & (closed[keep] < age + horizon), proposal_at[keep] < age + horizon)
        post = _deal_posterior(m, lin[:1], np.array([[age, 0.0, 0.0]]), np.array([0.0]),
                               np.array([pattern], dtype=float), np.array([age]))[0]
        mean, sd = post @ GRID, np.sqrt(post @ GRID**2 - (post @ GRID) ** 2)
        assert abs(w[keep].mean() - mean) < 4 * sd / np.sqrt(keep.sum()), (pattern, w[keep].mean(), mean)
        for p, y in zip(exact, outcomes, strict=True):
            se = np.sqrt(p[0] * (1 - p[0]) / keep.sum())
            assert abs(y.mean() - p[0]) < 4 * se, (pattern, y.mean(), p[0])


def test_planted_traits_exist_and_raise_won_value(tmp_path: Path):
    out = generate_sample(tmp_path, seed=5, scale=0.3).out
    traits = json.loads((out / "truth/traits.json").read_text())["traits"]
    assert len(traits) >= 2
    t = _read(out / "export")
    acc, opps = t["accounts"], t["opportunities"]
    won = opps[opps["outcome"] == "won"].assign(amount=lambda f: pd.to_numeric(f["amount"]))
    acc["won"] = acc["account_id"].map(won.groupby("account_id")["amount"].sum())
    customers = acc[acc["won"] > 0]
    flags = []
    for trait in traits:
        mask = pd.Series(True, index=customers.index)
        for cond in trait["conditions"]:
            assert cond["table"] == "accounts" and cond["column"] in acc.columns
            col = customers[cond["column"]]
            mask &= col == cond["value"] if cond["op"] == "==" else pd.to_numeric(col) >= cond["value"]
        assert mask.sum() >= 5, trait["name"]
        assert trait["amount_multiplier"] > 1 and trait["upsell_rate_multiplier"] > 1
        flags.append(mask.to_numpy(float))
    # log won value on the trait flags: each trait multiplies a customer's value clearly
    X = np.c_[np.ones(len(customers)), *flags]
    coef = np.linalg.lstsq(X, np.log(customers["won"].to_numpy()), rcond=None)[0]
    assert (np.exp(coef[1:]) > 1.3).all(), np.exp(coef[1:])

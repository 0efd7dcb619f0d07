"""The Dask engine's features: entity partitions hold complete leads, and the snapshots and batch scores
computed per partition on a two-worker cluster equal the pandas path's, frame for frame.

The cluster is a ``LocalCluster`` of two thread workers (``processes=False``): the same scheduling,
partitioning and serialisation of tasks, without starting processes in the test run (the process
workers are exercised by tests/training/test_dask_train.py's refresh)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("distributed")

from features.engine import (  # noqa: E402
    Engine,
    UnknownEngine,
    active_client,
    engine_from,
    engine_session,
    entity_buckets,
    lead_snapshots,
    map_leads,
    partition_accounts,
    partition_deals,
    partition_leads,
    using_client,
)
from features.engine import account_snapshots as dask_account_snapshots  # noqa: E402
from features.engine import deal_snapshots as dask_deal_snapshots  # noqa: E402
from features.customers import AccountFeatureSpec, account_snapshots  # noqa: E402
from features.deals import DealFeatureSpec, deal_snapshots  # noqa: E402
from features.leads import LeadFeatureSpec, snapshot_times  # noqa: E402
from features.leads import lead_snapshots as pandas_lead_snapshots  # noqa: E402
from features.pit import open_leads  # noqa: E402


@pytest.fixture(scope="module")
def local_cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            Client(lc) as client:
        yield client


@pytest.fixture
def cluster(local_cluster):
    """The module's cluster as the active engine for one test."""
    with using_client(local_cluster):
        yield local_cluster


@pytest.fixture(scope="module")
def spec_times(sample_export):
    spec = LeadFeatureSpec.from_export(sample_export, horizon_days=91, as_of=sample_export.exported_at)
    start = sample_export.leads["created_at"].min() + pd.Timedelta(days=30)
    return spec, snapshot_times(start, sample_export.exported_at - pd.Timedelta(days=91), 28)


def test_every_activity_of_a_lead_is_in_its_leads_partition(sample_export, cluster):
    parts = partition_leads(cluster, sample_export, npartitions=3)
    leads = cluster.gather(cluster.compute(parts.leads.to_delayed()))
    acts = cluster.gather(cluster.compute(parts.activities.to_delayed()))
    home = {lead: i for i, p in enumerate(leads) for lead in p["lead_id"]}
    assert sorted(home) == sorted(sample_export.leads["lead_id"])  # every lead once
    assert all(len(p) for p in leads)
    routed = sum(len(p) for p in acts)
    assert routed == sample_export.activities["lead_id"].notna().sum()
    for i, p in enumerate(acts):
        assert {home[lead] for lead in p["lead_id"]} <= {i}


def test_entity_buckets_are_stable_and_leave_missing_ids_out():
    ids = pd.Series(["L1", "L2", None, "L1", "L3"], dtype="str")
    b = entity_buckets(ids, 4)
    assert b[0] == b[3] and b[2] == -1 and ((b[[0, 1, 4]] >= 0) & (b[[0, 1, 4]] < 4)).all()
    assert (entity_buckets(ids, 4) == b).all()


def test_dask_snapshots_equal_the_pandas_ones(sample_export, spec_times, cluster):
    spec, times = spec_times
    expected = pandas_lead_snapshots(sample_export, times, spec)
    got = lead_snapshots(sample_export, times, spec)  # the session is open: per partition on the cluster
    assert active_client() is cluster
    assert len(expected) > 500 and expected["label"].sum() > 20
    pd.testing.assert_frame_equal(got, expected)


def test_snapshots_outside_a_session_are_the_pandas_ones(sample_export, spec_times):
    spec, times = spec_times
    assert active_client() is None
    pd.testing.assert_frame_equal(lead_snapshots(sample_export, times[-2:], spec),
                                  pandas_lead_snapshots(sample_export, times[-2:], spec))


def test_batch_scores_per_partition_equal_the_scores_in_one_process(sample_export, lead_scorer, cluster):
    as_of = sample_export.exported_at
    leads = open_leads(sample_export.leads, as_of)

    def score(part: pd.DataFrame, accounts: pd.DataFrame, acts: pd.DataFrame) -> pd.DataFrame:
        return lead_scorer.score(part, accounts, acts, as_of, n_reasons=3)

    expected = score(leads, sample_export.accounts, sample_export.activities)
    got = map_leads(sample_export, leads, score)
    assert len(got) == len(leads) > 50
    pd.testing.assert_frame_equal(got, expected)
    np.testing.assert_array_equal(got["lead_id"].to_numpy(), leads["lead_id"].to_numpy())


def test_engine_settings_are_validated_and_flags_win_over_settings():
    with pytest.raises(UnknownEngine, match="'spark' is not one of pandas, dask"):
        Engine("spark")
    with pytest.raises(UnknownEngine, match="workers must be at least 1, not 0"):
        Engine("dask", workers=0)

    class FakeSettings:
        engine, dask_scheduler, dask_workers, dask_threads, dask_memory_limit = "dask", "tcp://h:8786", 2, 1, "auto"

    class Args:
        engine, scheduler, dask_workers, dask_threads, dask_memory_limit = "pandas", None, 3, None, "2GB"

    assert engine_from(None, FakeSettings()) == Engine("dask", "tcp://h:8786", 2, 1, "auto")
    assert engine_from(Args(), FakeSettings()) == Engine("pandas", "tcp://h:8786", 3, 1, "2GB")


def test_a_session_opens_a_local_cluster_of_the_asked_size_and_closes_it():
    with engine_session(Engine("dask", workers=2, threads=1, processes=False)) as client:
        assert active_client() is client
        assert len(client.scheduler_info()["workers"]) == 2
    assert active_client() is None and client.status == "closed"
    with engine_session(Engine()) as none:
        assert none is None and active_client() is None


def _gathered(client, frames) -> list[list[pd.DataFrame]]:
    return [client.gather(client.compute(f.to_delayed())) for f in frames]


def test_every_row_a_deal_reads_is_in_its_deals_partition(sample_export, cluster):
    opps, sh, acts, leads, accounts = _gathered(cluster, partition_deals(cluster, sample_export, npartitions=3))
    home = {o: i for i, p in enumerate(opps) for o in p["opportunity_id"]}
    assert sorted(home) == sorted(sample_export.opportunities["opportunity_id"])
    assert sum(map(len, sh)) == len(sample_export.stage_history)
    assert sum(map(len, acts)) == sample_export.activities["opportunity_id"].notna().sum()
    for i in range(3):
        assert {home[o] for o in sh[i]["opportunity_id"]} <= {i}
        assert {home[o] for o in acts[i]["opportunity_id"]} <= {i}
        # the leads and accounts the deals name, copied to each partition that names them
        assert set(opps[i]["lead_id"].dropna()) == set(leads[i]["lead_id"])
        assert set(opps[i]["account_id"].dropna()) <= set(accounts[i]["account_id"])


def test_dask_deal_snapshots_equal_the_pandas_ones(sample_export, cluster):
    t0 = sample_export.opportunities["created_at"].min() + pd.Timedelta(days=20)
    times = snapshot_times(t0, sample_export.exported_at, 28)
    spec = DealFeatureSpec.from_export(sample_export, as_of=times[-1])
    expected = deal_snapshots(sample_export, times, spec)
    assert len(expected) > 500 and expected["won"].sum() > 20
    pd.testing.assert_frame_equal(dask_deal_snapshots(sample_export, times, spec), expected)


@pytest.fixture(scope="module")
def account_export(tmp_path_factory):
    """A sample with a few hundred customers whose value is complete (the small one has a few dozen)."""
    from features.io import load_export
    from features.sample import generate_sample

    out = tmp_path_factory.mktemp("accounts")
    generate_sample(out, seed=11, scale=0.15)
    return load_export(out / "export")[0]


def test_every_row_of_an_account_is_in_its_accounts_partition(account_export, cluster):
    accounts, leads, opps, sh, acts = _gathered(cluster, partition_accounts(cluster, account_export, npartitions=3))
    home = {a: i for i, p in enumerate(accounts) for a in p["account_id"]}
    assert sorted(home) == sorted(account_export.accounts["account_id"])
    assert sum(map(len, opps)) == account_export.opportunities["account_id"].notna().sum()
    deal_home = {}
    for i in range(3):
        assert {home[a] for a in leads[i]["account_id"]} <= {i}
        assert {home[a] for a in opps[i]["account_id"]} <= {i}
        deal_home.update({o: i for o in opps[i]["opportunity_id"]})
    for i in range(3):
        assert {deal_home[o] for o in sh[i]["opportunity_id"]} <= {i}
        # an activity goes with its deal's account (else its own account, else its lead's)
        assert {deal_home.get(o, i) for o in acts[i]["opportunity_id"].dropna()} <= {i}


@pytest.mark.parametrize("threshold", [None, 50_000.0])
def test_dask_account_snapshots_equal_the_pandas_ones(account_export, cluster, threshold):
    spec = AccountFeatureSpec.from_export(account_export)
    expected, expected_threshold = account_snapshots(account_export, account_export.exported_at, spec,
                                                     threshold=threshold)
    got, got_threshold = dask_account_snapshots(account_export, account_export.exported_at, spec, threshold=threshold)
    assert got_threshold == expected_threshold
    assert len(expected) > 50 and 0 < expected["label"].sum() < len(expected)
    pd.testing.assert_frame_equal(got, expected)


def test_dask_account_snapshots_of_a_history_too_short_say_so(account_export, cluster):
    spec = AccountFeatureSpec.from_export(account_export)
    early = account_export.opportunities["created_at"].min() + pd.Timedelta(days=30)
    from features.errors import NothingToLearnFrom

    with pytest.raises(NothingToLearnFrom, match="first won deal is at least 365 days before the cutoff") as caught:
        dask_account_snapshots(account_export, early, spec)
    assert "the export has " in str(caught.value)  # what it found


def test_backtest_snapshots_are_built_per_deal_partition_in_a_session(sample_export, cluster, monkeypatch):
    """``backtest --engine dask``: the deal snapshots of every origin come from the deal partitions on the
    cluster (features.engine), and equal the pandas path's."""
    import features.engine as engine
    from training.backtest import _snapshots
    from training.deals import DealTrainConfig

    calls = []
    monkeypatch.setattr(engine, "partition_deals", lambda *a, **k: calls.append(1) or partition_deals(*a, **k))
    t0 = sample_export.exported_at - pd.Timedelta(days=91 + 112)
    origins = [(t0 + pd.Timedelta(days=56 * i)).floor("D") for i in range(3)]
    dc = DealTrainConfig(snapshot_every_days=28, seed=7)
    spec, got = _snapshots(sample_export, origins, dc, progress=False)
    assert calls == [1]
    with using_client(None):  # the same call outside a session: the pandas path
        _, expected = _snapshots(sample_export, origins, dc, progress=False)
    assert set(origins) <= set(got["as_of"]) and len(got) > 500
    pd.testing.assert_frame_equal(got, expected)

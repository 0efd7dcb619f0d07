"""Reading, validating and writing a CRM export (features/io.py), on tiny exports built by hand."""

from __future__ import annotations

import copy
import datetime as dt
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import features.io as io_module
from features.contract import TABLES, Kind
from features.errors import (
    ExportSourceError,
    ExportValidationError,
    MissingColumn,
    MissingTable,
)
from features.io import (
    NO_LINK_COLUMN,
    REASON_BAD_DATE,
    REASON_BAD_NUMBER,
    REASON_BAD_TIMESTAMP,
    REASON_CLOSED_WITHOUT_CLOSED_AT,
    REASON_DUPLICATE,
    REASON_FK_NOWHERE,
    REASON_FK_SKIPPED,
    REASON_MISSING,
    REASON_NO_LINK,
    REASON_OPEN_WITH_CLOSED_AT,
    REASON_STAGE_OUTCOME,
    REASON_UNKNOWN_OUTCOME,
    REASON_UNKNOWN_STAGE,
    coerce_records,
    coerce_table,
    load_export,
    write_export,
)

CORE = ("accounts", "leads", "opportunities", "stage_history", "activities")


def base_tables() -> dict[str, list[dict[str, str]]]:
    """A small valid export as CSV cells (every value a string, "" = empty cell)."""
    return {
        "accounts": [
            {"account_id": "007", "created_at": "2024-01-01", "industry": " Software", "country": "US",
             "employees": "12", "annual_revenue": "", "tier": "Gold"},
            {"account_id": "A2", "created_at": "2024-01-02T10:00:00+02:00", "industry": "", "country": "de",
             "employees": "", "annual_revenue": "1500.5", "tier": "silver "},
        ],
        "leads": [
            {"lead_id": "L1", "created_at": "2024-01-03T08:00:00Z", "account_id": "007", "owner_id": "r1",
             "source": " Web", "seniority": "VP", "country": "us", "converted_at": "2024-01-10T09:00:00Z",
             "opportunity_id": "O1", "disqualified_at": "", "budget_k": "10"},
            {"lead_id": "L2", "created_at": "2024-01-04", "account_id": "", "owner_id": "",
             "source": "WEB", "seniority": "", "country": "", "converted_at": "",
             "opportunity_id": "", "disqualified_at": "", "budget_k": ""},
        ],
        "opportunities": [
            {"opportunity_id": "O1", "account_id": "007", "created_at": "2024-01-10T09:00:00Z", "lead_id": "L1",
             "owner_id": "r1", "type": "New", "product": "core", "amount": "1000", "expected_close_date": "2024-03-01",
             "stage": "Won", "outcome": "WON", "closed_at": "2024-02-01T12:00:00-05:00"},
            {"opportunity_id": "O2", "account_id": "A2", "created_at": "2024-01-11", "lead_id": "",
             "owner_id": "", "type": "", "product": "", "amount": "", "expected_close_date": "",
             "stage": "proposal", "outcome": "open", "closed_at": ""},
        ],
        "stage_history": [
            {"opportunity_id": "O1", "stage": "qualification", "entered_at": "2024-01-10T09:00:00Z", "amount": "",
             "expected_close_date": ""},
            {"opportunity_id": "O1", "stage": "won", "entered_at": "2024-02-01T17:00:00Z", "amount": "1000",
             "expected_close_date": "2024-03-01"},
            {"opportunity_id": "O2", "stage": "qualification", "entered_at": "2024-01-11", "amount": "",
             "expected_close_date": ""},
            {"opportunity_id": "O2", "stage": "Proposal", "entered_at": "2024-01-20", "amount": "500",
             "expected_close_date": "2024-04-01"},
        ],
        "activities": [
            {"activity_id": "X1", "occurred_at": "2024-01-05T09:30:00.25-05:00", "type": "Email", "lead_id": "L1",
             "opportunity_id": "", "account_id": "", "direction": "inbound", "score": ""},
            {"activity_id": "X2", "occurred_at": "2024-01-12", "type": "meeting", "lead_id": "",
             "opportunity_id": "O2", "account_id": "", "direction": "", "score": "4.5"},
            {"activity_id": "X3", "occurred_at": "2024-01-13T00:00:00", "type": "call", "lead_id": "",
             "opportunity_id": "", "account_id": "A2", "direction": "Outbound", "score": ""},
        ],
        "reps": [
            {"owner_id": "r1", "team": "East", "region": "EMEA", "capacity": "30"},
        ],
    }


def write_tables(folder: Path, tables: dict[str, list[dict[str, str]]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        # CRLF line ends, as Excel writes them; the csv module then quotes any cell holding \r or \n
        pd.DataFrame(rows, dtype=str).to_csv(folder / f"{name}.csv", index=False, lineterminator="\r\n")
    return folder


def bad_rows_of(tmp_path: Path, tables) -> list[tuple[str, int, str, str]]:
    with pytest.raises(ExportValidationError) as err:
        load_export(write_tables(tmp_path / "export", tables))
    return [(b.table, b.row, b.column, b.reason) for b in err.value.report.bad_rows]


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    return write_tables(tmp_path / "export", base_tables())


# --------------------------------------------------------------------------------------------
# typing
# --------------------------------------------------------------------------------------------


def test_clean_export_loads_with_contract_dtypes(export_dir: Path) -> None:
    export, report = load_export(export_dir)

    assert not report and not report.skipped
    assert report.row_counts == {"accounts": 2, "leads": 2, "opportunities": 2, "stage_history": 4,
                                 "activities": 3, "reps": 1}
    for name in TABLES:
        frame = export.table(name)
        assert isinstance(frame.index, pd.RangeIndex)
        for col in TABLES[name].columns:
            dtype = frame[col.name].dtype
            if col.kind in (Kind.TIMESTAMP, Kind.DATE):
                assert dtype == "datetime64[ns, UTC]", (name, col.name)
            elif col.kind is Kind.NUMBER:
                assert dtype == "float64", (name, col.name)
            else:
                assert dtype == "str", (name, col.name)


def test_ids_stay_strings(export_dir: Path) -> None:
    export, _ = load_export(export_dir)

    assert export.accounts["account_id"].tolist() == ["007", "A2"]
    assert export.leads.loc[0, "account_id"] == "007"
    assert export.opportunities.loc[0, "account_id"] == "007"


def test_numeric_ids_from_parquet_become_plain_strings(tmp_path: Path) -> None:
    accounts = pd.DataFrame({"account_id": [7.0, 8.0, np.nan], "created_at": ["2024-01-01"] * 3})
    typed, bad = coerce_table("accounts", accounts)
    assert typed["account_id"].tolist()[:2] == ["7", "8"]
    assert [(b.row, b.column, b.reason) for b in bad] == [(3, "account_id", REASON_MISSING)]

    ints = pd.DataFrame({"account_id": [7, 8], "created_at": ["2024-01-01"] * 2})
    assert coerce_table("accounts", ints)[0]["account_id"].tolist() == ["7", "8"]


def test_timestamps_are_utc_whatever_offset(export_dir: Path) -> None:
    export, _ = load_export(export_dir)
    ts = pd.Timestamp

    assert export.accounts["created_at"].tolist() == [ts("2024-01-01", tz="UTC"), ts("2024-01-02T08:00", tz="UTC")]
    assert export.opportunities.loc[0, "closed_at"] == ts("2024-02-01T17:00", tz="UTC")
    assert export.activities["occurred_at"].tolist() == [
        ts("2024-01-05T14:30:00.25", tz="UTC"), ts("2024-01-12", tz="UTC"), ts("2024-01-13", tz="UTC")
    ]
    assert export.opportunities.loc[0, "expected_close_date"] == ts("2024-03-01", tz="UTC")


def test_dates_keep_the_calendar_date_written() -> None:
    opps = pd.DataFrame([{**base_tables()["opportunities"][1], "expected_close_date": "2024-03-01T00:00:00+02:00"}])
    typed, bad = coerce_table("opportunities", opps)
    assert not bad
    assert typed.loc[0, "expected_close_date"] == pd.Timestamp("2024-03-01", tz="UTC")


def test_categories_trimmed_and_case_folded(export_dir: Path) -> None:
    export, _ = load_export(export_dir)

    assert export.leads["source"].tolist() == ["web", "web"]
    assert export.accounts["industry"].tolist()[0] == "software"
    assert export.opportunities["stage"].tolist() == ["won", "proposal"]
    assert export.opportunities["outcome"].tolist() == ["won", "open"]
    assert export.activities["direction"].tolist()[2] == "outbound"


def test_open_stages_are_normalised_too(export_dir: Path) -> None:
    export, _ = load_export(export_dir, open_stages=[" Qualification", "PROPOSAL", "contract"])
    assert export.open_stages == ("qualification", "proposal", "contract")


def test_custom_columns_kept_and_typed(export_dir: Path) -> None:
    export, _ = load_export(export_dir)

    assert export.custom_fields["accounts"] == ["tier"]
    assert export.custom_fields["leads"] == ["budget_k"]
    assert export.custom_fields["opportunities"] == []
    assert export.accounts["tier"].tolist() == ["gold", "silver"]
    assert export.accounts["tier"].dtype == "str"
    assert export.leads["budget_k"].dtype == "float64"
    assert export.leads["budget_k"].tolist()[0] == 10.0 and np.isnan(export.leads["budget_k"].iloc[1])
    assert list(export.accounts.columns) == [*TABLES["accounts"].column_names, "tier"]


def test_custom_kinds_force_the_training_kind() -> None:
    leads = pd.DataFrame([{"lead_id": "L1", "created_at": "2024-01-01", "budget_k": "n/a"},
                          {"lead_id": "L2", "created_at": "2024-01-01", "budget_k": "5"}])
    free, bad = coerce_table("leads", leads)
    assert free["budget_k"].tolist() == ["n/a", "5"] and not bad

    forced, bad = coerce_table("leads", leads, custom_kinds={"budget_k": Kind.NUMBER}, row_offset=0)
    assert forced["budget_k"].dtype == "float64" and forced["budget_k"].iloc[1] == 5.0
    assert [(b.row, b.column, b.reason, b.value) for b in bad] == [(0, "budget_k", REASON_BAD_NUMBER, "n/a")]


def test_empty_optional_cells_are_missing_not_errors(export_dir: Path) -> None:
    export, report = load_export(export_dir)

    assert not report
    lead = export.leads.iloc[1]
    assert pd.isna(lead["account_id"]) and pd.isna(lead["seniority"]) and pd.isna(lead["converted_at"])
    assert pd.isna(export.opportunities.loc[1, "amount"]) and pd.isna(export.opportunities.loc[1, "closed_at"])


def test_whitespace_only_cells_are_missing(tmp_path: Path) -> None:
    tables = base_tables()
    tables["leads"][1]["seniority"] = "   "
    tables["leads"][1]["owner_id"] = " "
    export, report = load_export(write_tables(tmp_path / "e", tables))
    assert not report
    assert pd.isna(export.leads.loc[1, "seniority"]) and pd.isna(export.leads.loc[1, "owner_id"])


def test_optional_columns_absent_are_added_missing(tmp_path: Path) -> None:
    tables = base_tables()
    tables["leads"] = [{k: row[k] for k in ("lead_id", "created_at")} for row in tables["leads"]]
    export, report = load_export(write_tables(tmp_path / "e", tables))

    assert not report
    assert list(export.leads.columns) == TABLES["leads"].column_names
    assert export.leads["converted_at"].dtype == "datetime64[ns, UTC]" and export.leads["converted_at"].isna().all()


def test_reps_are_optional(tmp_path: Path) -> None:
    tables = base_tables()
    del tables["reps"]
    export, report = load_export(write_tables(tmp_path / "e", tables))

    assert export.reps is None and not report
    assert "reps" not in report.row_counts


def test_exported_at_is_the_latest_timestamp_floored_to_the_second(tmp_path: Path) -> None:
    tables = base_tables()
    tables["activities"][2]["occurred_at"] = "2024-02-03T04:05:06.789Z"
    export, _ = load_export(write_tables(tmp_path / "e", tables))
    assert export.exported_at == pd.Timestamp("2024-02-03T04:05:06", tz="UTC")

    given_at = pd.Timestamp("2024-06-01T00:00:00")
    export, _ = load_export(tmp_path / "e", exported_at=given_at)
    assert export.exported_at == pd.Timestamp("2024-06-01", tz="UTC")


def test_dates_do_not_count_as_export_time(tmp_path: Path) -> None:
    tables = base_tables()
    tables["opportunities"][1]["expected_close_date"] = "2030-01-01"
    export, _ = load_export(write_tables(tmp_path / "e", tables))
    assert export.exported_at == pd.Timestamp("2024-02-01T17:00", tz="UTC")


# --------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["csv", "parquet", "sqlite"])
def test_round_trip(export_dir: Path, tmp_path: Path, target: str) -> None:
    export, _ = load_export(export_dir)
    dest = f"sqlite:///{tmp_path / 'crm.db'}" if target == "sqlite" else tmp_path / "out"
    write_export(export, dest, fmt="parquet" if target == "parquet" else "csv")

    again, report = load_export(dest)

    assert not report
    for name in TABLES:
        pd.testing.assert_frame_equal(again.table(name), export.table(name))
    assert again.custom_fields == export.custom_fields
    assert again.exported_at == export.exported_at


def test_csv_writes_iso_utc_with_z_and_plain_dates(export_dir: Path, tmp_path: Path) -> None:
    export, _ = load_export(export_dir)
    write_export(export, tmp_path / "out")

    activities = pd.read_csv(tmp_path / "out" / "activities.csv", dtype=str, keep_default_na=False)
    assert activities["occurred_at"].tolist() == ["2024-01-05T14:30:00.25Z", "2024-01-12T00:00:00Z",
                                                  "2024-01-13T00:00:00Z"]
    opps = pd.read_csv(tmp_path / "out" / "opportunities.csv", dtype=str, keep_default_na=False)
    assert opps["expected_close_date"].tolist() == ["2024-03-01", ""]
    assert opps["account_id"].tolist() == ["007", "A2"]
    assert opps["amount"].tolist() == ["1000", ""]
    assert list(opps.columns) == TABLES["opportunities"].column_names


def test_writing_parquet_next_to_csv_is_refused(export_dir: Path) -> None:
    export, _ = load_export(export_dir)
    with pytest.raises(FileExistsError, match="accounts.csv"):
        write_export(export, export_dir, fmt="parquet")


# --------------------------------------------------------------------------------------------
# bad rows: one rule at a time, with the right table, row, column and reason
# --------------------------------------------------------------------------------------------

# (table, 0-based index in base_tables(), column, new cell, expected BadRow column, expected reason)
RULES = [
    ("accounts", 1, "account_id", "", "account_id", REASON_MISSING),
    ("accounts", 1, "account_id", "007", "account_id", REASON_DUPLICATE),
    ("accounts", 0, "created_at", "yesterday", "created_at", REASON_BAD_TIMESTAMP),
    ("accounts", 0, "created_at", "", "created_at", REASON_MISSING),
    ("accounts", 0, "employees", "ten", "employees", REASON_BAD_NUMBER),
    ("accounts", 0, "employees", "-5", "employees", "below the minimum 0"),
    ("accounts", 1, "annual_revenue", "-0.5", "annual_revenue", "below the minimum 0"),
    ("reps", 0, "capacity", "-1", "capacity", "below the minimum 0"),
    ("opportunities", 0, "amount", "-1", "amount", "below the minimum 0"),
    ("opportunities", 0, "expected_close_date", "next week", "expected_close_date", REASON_BAD_DATE),
    ("opportunities", 1, "outcome", "maybe", "outcome", REASON_UNKNOWN_OUTCOME),
    ("opportunities", 1, "stage", "negotiation", "stage", REASON_UNKNOWN_STAGE),
    ("stage_history", 3, "stage", "negotiation", "stage", REASON_UNKNOWN_STAGE),
    ("stage_history", 2, "entered_at", "2024-13-45", "entered_at", REASON_BAD_TIMESTAMP),
    ("opportunities", 0, "closed_at", "", "closed_at", REASON_CLOSED_WITHOUT_CLOSED_AT),
    ("opportunities", 1, "closed_at", "2024-02-01", "closed_at", REASON_OPEN_WITH_CLOSED_AT),
    ("opportunities", 0, "stage", "proposal", "stage", REASON_STAGE_OUTCOME),
    ("opportunities", 1, "stage", "lost", "stage", REASON_STAGE_OUTCOME),
    ("opportunities", 0, "closed_at", "2024-01-01", "closed_at", "closed_at before created_at"),
    ("leads", 0, "converted_at", "2024-01-02", "converted_at", "converted_at before created_at"),
    ("leads", 1, "disqualified_at", "2024-01-01T23:00:00-02:00", "disqualified_at",
     "disqualified_at before created_at"),
    ("activities", 2, "account_id", "", NO_LINK_COLUMN, REASON_NO_LINK),
    ("activities", 0, "occurred_at", "", "occurred_at", REASON_MISSING),
    ("activities", 1, "type", " ", "type", REASON_MISSING),
    ("activities", 0, "lead_id", "L9", "lead_id", REASON_FK_NOWHERE),
    ("activities", 1, "opportunity_id", "o2", "opportunity_id", REASON_FK_NOWHERE),
    ("stage_history", 0, "opportunity_id", "O9", "opportunity_id", REASON_FK_NOWHERE),
    ("leads", 1, "account_id", "7", "account_id", REASON_FK_NOWHERE),
    ("opportunities", 1, "lead_id", "L3", "lead_id", REASON_FK_NOWHERE),
]


@pytest.mark.parametrize(("table", "index", "column", "cell", "bad_column", "reason"), RULES)
def test_each_rule_is_reported_where_it_broke(tmp_path, table, index, column, cell, bad_column, reason) -> None:
    tables = base_tables()
    tables[table][index][column] = cell

    found = bad_rows_of(tmp_path, tables)

    assert (table, index + 1, bad_column, reason) in found
    if column != TABLES[table].key:  # changing a key also orphans the rows pointing at it
        assert all(t == table and r == index + 1 for t, r, _, _ in found), found


def test_every_duplicate_after_the_first_is_reported(tmp_path: Path) -> None:
    tables = base_tables()
    tables["activities"][1]["activity_id"] = "X1"
    tables["activities"][2]["activity_id"] = "X1"
    found = bad_rows_of(tmp_path, tables)
    assert found == [
        ("activities", 2, "activity_id", REASON_DUPLICATE),
        ("activities", 3, "activity_id", REASON_DUPLICATE),
    ]


def test_bad_row_carries_the_value(tmp_path: Path) -> None:
    tables = base_tables()
    tables["accounts"][0]["created_at"] = "31/12/2023"
    with pytest.raises(ExportValidationError) as err:
        load_export(write_tables(tmp_path / "e", tables))
    (bad,) = err.value.report.bad_rows
    assert bad.value == "31/12/2023"
    assert "accounts row 1, column created_at" in str(err.value)
    assert "31/12/2023" in str(err.value)


def test_stage_outside_configured_stages_is_unknown(export_dir: Path) -> None:
    with pytest.raises(ExportValidationError) as err:
        load_export(export_dir, open_stages=("discovery", "proposal"))
    found = {(b.table, b.row, b.reason) for b in err.value.report.bad_rows}
    assert found == {("stage_history", 1, REASON_UNKNOWN_STAGE), ("stage_history", 3, REASON_UNKNOWN_STAGE)}


def test_error_lists_rows_and_counts_per_reason(tmp_path: Path) -> None:
    tables = base_tables()
    tables["activities"][0]["occurred_at"] = "soon"
    tables["activities"][1]["occurred_at"] = "later"
    with pytest.raises(ExportValidationError) as err:
        load_export(write_tables(tmp_path / "e", tables))
    message = str(err.value)
    assert "2 invalid row(s)" in message
    assert "activities row 1, column occurred_at" in message and "activities row 2" in message
    assert f"activities: {REASON_BAD_TIMESTAMP}: 2" in message


def test_without_skipping_a_broken_parent_does_not_cascade(tmp_path: Path) -> None:
    """An admin fixing account 007's employee count should not be told about its children."""
    tables = base_tables()
    tables["accounts"][0]["employees"] = "-3"
    assert bad_rows_of(tmp_path, tables) == [("accounts", 1, "employees", "below the minimum 0")]


# --------------------------------------------------------------------------------------------
# skipping bad rows
# --------------------------------------------------------------------------------------------


def _kept(export) -> dict[str, list[str]]:
    """The ids of the rows the loader kept, per table (the stage history by its deal)."""
    return {
        "accounts": export.accounts["account_id"].tolist(),
        "leads": export.leads["lead_id"].tolist(),
        "opportunities": export.opportunities["opportunity_id"].tolist(),
        "stage_history": export.stage_history["opportunity_id"].tolist(),
        "activities": export.activities["activity_id"].tolist(),
    }


def test_skip_drops_exactly_the_bad_rows(tmp_path: Path) -> None:
    tables = base_tables()
    tables["activities"][0]["occurred_at"] = "soon"
    tables["activities"][2]["activity_id"] = "X2"
    tables["leads"][1]["created_at"] = ""

    export, report = load_export(write_tables(tmp_path / "e", tables), skip_bad_rows=True)

    assert report.skipped
    assert export.activities["activity_id"].tolist() == ["X2"]
    assert export.leads["lead_id"].tolist() == ["L1"]
    assert isinstance(export.activities.index, pd.RangeIndex)
    assert report.row_counts["activities"] == 1 and report.row_counts["leads"] == 1
    assert report.counts_by_reason() == {
        ("leads", REASON_MISSING): 1,
        ("activities", REASON_BAD_TIMESTAMP): 1,
        ("activities", REASON_DUPLICATE): 1,
    }
    assert "rows skipped per reason" in report.summary()


def test_skip_cascades_through_foreign_keys(tmp_path: Path) -> None:
    """Account A2 is broken: opportunity O2, its stage history, and activities X2 and X3 go with it."""
    tables = base_tables()
    tables["accounts"][1]["employees"] = "-1"

    export, report = load_export(write_tables(tmp_path / "e", tables), skip_bad_rows=True)

    assert _kept(export) == {"accounts": ["007"], "leads": ["L1", "L2"], "opportunities": ["O1"],
                             "stage_history": ["O1", "O1"], "activities": ["X1"]}
    assert report.counts_by_reason() == {
        ("accounts", "below the minimum 0"): 1,
        ("opportunities", REASON_FK_SKIPPED): 1,
        ("stage_history", REASON_FK_SKIPPED): 2,
        ("activities", REASON_FK_SKIPPED): 2,
    }
    rows = {(b.table, b.row, b.column) for b in report.bad_rows if b.reason == REASON_FK_SKIPPED}
    assert rows == {("opportunities", 2, "account_id"), ("stage_history", 3, "opportunity_id"),
                    ("stage_history", 4, "opportunity_id"), ("activities", 2, "opportunity_id"),
                    ("activities", 3, "account_id")}


def test_skip_cascade_reaches_a_fixpoint_across_a_cycle(tmp_path: Path) -> None:
    """O1 is skipped, so lead L1 (which became O1) goes, so activity X1 (on L1) goes."""
    tables = base_tables()
    tables["opportunities"][0]["closed_at"] = ""

    export, report = load_export(write_tables(tmp_path / "e", tables), skip_bad_rows=True)

    assert _kept(export) == {"accounts": ["007", "A2"], "leads": ["L2"], "opportunities": ["O2"],
                             "stage_history": ["O2", "O2"], "activities": ["X2", "X3"]}
    assert report.counts_by_reason()[("leads", REASON_FK_SKIPPED)] == 1
    assert report.counts_by_reason()[("activities", REASON_FK_SKIPPED)] == 1


def test_skip_with_nothing_bad_keeps_everything(export_dir: Path) -> None:
    export, report = load_export(export_dir, skip_bad_rows=True)
    assert not report and report.row_counts["activities"] == 3


# --------------------------------------------------------------------------------------------
# missing tables, columns, sources
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", CORE)
def test_missing_core_table(tmp_path: Path, table: str) -> None:
    tables = base_tables()
    del tables[table]
    with pytest.raises(MissingTable, match=table) as err:
        load_export(write_tables(tmp_path / "e", tables))
    assert err.value.table == table and str(tmp_path / "e") in str(err.value)


@pytest.mark.parametrize(("table", "column"), [(t, c.name) for t in TABLES for c in TABLES[t].columns if c.required])
def test_missing_required_column(tmp_path: Path, table: str, column: str) -> None:
    tables = base_tables()
    tables[table] = [{k: v for k, v in row.items() if k != column} for row in tables[table]]
    with pytest.raises(MissingColumn) as err:
        load_export(write_tables(tmp_path / "e", tables))
    assert (err.value.table, err.value.column) == (table, column)


def test_both_csv_and_parquet_is_an_error(export_dir: Path) -> None:
    pd.read_csv(export_dir / "leads.csv", dtype=str).to_parquet(export_dir / "leads.parquet")
    with pytest.raises(ExportSourceError, match=r"leads\.csv and leads\.parquet"):
        load_export(export_dir)


def test_a_column_named_twice_is_an_error() -> None:
    frame = pd.DataFrame([["A", "2024-01-01", "x", "y"]], columns=["account_id", "created_at", "tier", " tier"])
    with pytest.raises(ExportSourceError, match="'tier' appear twice"):
        coerce_table("accounts", frame)


def test_no_such_folder(tmp_path: Path) -> None:
    with pytest.raises(ExportSourceError, match="no such folder"):
        load_export(tmp_path / "nope")


def test_missing_sql_table_and_missing_sqlite_file(export_dir: Path, tmp_path: Path) -> None:
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'crm.db'}"
    export, _ = load_export(export_dir)
    write_export(export, url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE stage_history"))
    engine.dispose()

    with pytest.raises(MissingTable, match="stage_history"):
        load_export(url)
    with pytest.raises(ExportSourceError, match="no such SQLite file"):
        load_export(f"sqlite:///{tmp_path / 'absent.db'}")
    assert not (tmp_path / "absent.db").exists()


def test_sql_text_ids_and_naive_timestamps(tmp_path: Path) -> None:
    """A database written by someone else: integer ids, naive timestamps, empty strings."""
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'crm.db'}"
    frames = {name: pd.DataFrame(rows, dtype=str) for name, rows in base_tables().items()}
    frames["accounts"]["account_id"] = ["7", "8"]
    frames["opportunities"]["account_id"] = ["7", "8"]
    frames["leads"]["account_id"] = ["7", ""]
    frames["activities"]["account_id"] = ["", "", "8"]
    accounts = frames["accounts"].assign(account_id=[7, 8], created_at=pd.to_datetime(["2024-01-01", "2024-01-02"]))
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for name, frame in {**frames, "accounts": accounts}.items():
            frame.to_sql(name, conn, index=False)
    engine.dispose()

    export, report = load_export(url)

    assert not report
    assert export.accounts["account_id"].tolist() == ["7", "8"]
    assert export.accounts["created_at"].tolist() == [pd.Timestamp("2024-01-01", tz="UTC"),
                                                      pd.Timestamp("2024-01-02", tz="UTC")]
    assert pd.isna(export.leads.loc[1, "account_id"])


def test_parquet_written_by_someone_else(export_dir: Path, tmp_path: Path) -> None:
    """Native Parquet types: float ids with gaps, naive and zoned timestamps, date32, booleans."""
    folder = tmp_path / "pq"
    folder.mkdir()
    for name in TABLES:
        pd.read_csv(export_dir / f"{name}.csv", dtype=str, keep_default_na=False).to_parquet(folder / f"{name}.parquet")
    opps = pd.read_parquet(folder / "opportunities.parquet")
    opps["created_at"] = pd.to_datetime(["2024-01-10T09:00:00", "2024-01-11T00:00:00"])  # naive: UTC
    opps["closed_at"] = pd.Series([pd.Timestamp("2024-02-01T12:00", tz="America/New_York"), pd.NaT])
    opps["expected_close_date"] = [dt.date(2024, 3, 1), None]
    opps["amount"] = [1000, None]
    opps["is_priority"] = [True, False]
    opps.to_parquet(folder / "opportunities.parquet")
    reps = pd.DataFrame({"owner_id": [1.0, 2.0], "capacity": [30, 10]})
    reps.to_parquet(folder / "reps.parquet")

    export, report = load_export(folder)

    assert [(b.table, b.row, b.reason) for b in report.bad_rows] == []
    o = export.opportunities
    assert o["created_at"].tolist() == [
        pd.Timestamp("2024-01-10T09:00", tz="UTC"),
        pd.Timestamp("2024-01-11", tz="UTC"),
    ]
    assert o.loc[0, "closed_at"] == pd.Timestamp("2024-02-01T17:00", tz="UTC")
    assert o.loc[0, "expected_close_date"] == pd.Timestamp("2024-03-01", tz="UTC")
    assert o["expected_close_date"].dtype == "datetime64[ns, UTC]" and o["amount"].dtype == "float64"
    assert o["is_priority"].tolist() == ["true", "false"]
    assert export.reps["owner_id"].tolist() == ["1", "2"]


def test_json_records_of_mixed_python_types() -> None:
    records = [
        {"activity_id": 2**70, "occurred_at": dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=1))),
         "type": "Email", "lead_id": 7, "score": "3"},
        {"activity_id": "b", "occurred_at": "2024-01-02", "type": True, "lead_id": None, "score": 4.5},
    ]
    typed, bad = coerce_table("activities", pd.DataFrame(records), row_offset=0)

    assert typed["activity_id"].tolist() == [str(2**70), "b"]
    assert typed.loc[0, "occurred_at"] == pd.Timestamp("2024-01-01T11:00", tz="UTC")
    assert typed["lead_id"].tolist()[0] == "7" and typed["score"].tolist() == [3.0, 4.5]
    assert [(b.row, b.reason) for b in bad] == [(1, REASON_NO_LINK)]


_json_value = st.one_of(
    st.none(), st.integers(-(10**20), 10**20), st.floats(), st.booleans(), st.text(max_size=8),
    st.datetimes(timezones=st.one_of(st.none(), st.timezones())), st.dates(),
)


@settings(max_examples=40, deadline=None)
@given(
    table=st.sampled_from(list(TABLES)),
    edits=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 20), _json_value), max_size=6),
)
def test_coerce_table_survives_any_json_values(table, edits) -> None:
    rows = copy.deepcopy(base_tables()[table])
    columns = list(rows[0])
    for i, c, value in edits:
        rows[i % len(rows)][columns[c % len(columns)]] = value

    typed, bad = coerce_table(table, pd.DataFrame(rows), row_offset=0)

    assert len(typed) == len(rows)
    assert all(0 <= b.row < len(rows) and b.table == table for b in bad)


# --------------------------------------------------------------------------------------------
# coerce_table on its own (the API's path)
# --------------------------------------------------------------------------------------------


def test_coerce_table_numbers_rows_from_the_offset_and_keeps_every_row() -> None:
    records = [
        {"lead_id": "L1", "created_at": "2024-01-01T00:00:00Z", "source": "Web"},
        {"lead_id": "L2", "created_at": "not a time", "source": "referral"},
    ]
    typed, bad = coerce_table("leads", pd.DataFrame(records), row_offset=0)

    assert len(typed) == 2 and typed["source"].tolist() == ["web", "referral"]
    assert pd.isna(typed.loc[1, "created_at"])
    assert [(b.table, b.row, b.column, b.reason, b.value) for b in bad] == [
        ("leads", 1, "created_at", REASON_BAD_TIMESTAMP, "not a time")
    ]


def test_coerce_table_does_not_check_foreign_keys() -> None:
    frame = pd.DataFrame([{"opportunity_id": "O404", "stage": "proposal", "entered_at": "2024-01-01"}])
    _, bad = coerce_table("stage_history", frame)
    assert bad == []


# --------------------------------------------------------------------------------------------
# coerce_records: the API's records, typed value by value, equal coerce_table's frames
# --------------------------------------------------------------------------------------------

_messy_text = st.text(alphabet=st.sampled_from(list(" \t\nAaBbZz09-_.éßİΣσ\u00a0\u2003ﬁ")), max_size=6) | st.text(max_size=4)
_offsets = st.timedeltas(min_value=dt.timedelta(hours=-23, minutes=-59), max_value=dt.timedelta(hours=23, minutes=59))
_minute_offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
_in_range = st.datetimes(
    min_value=dt.datetime(1700, 1, 1), max_value=dt.datetime(2200, 1, 1),
    timezones=st.none() | _minute_offsets | st.just(dt.UTC),
)
_moments = st.datetimes(
    min_value=dt.datetime(1600, 1, 1), max_value=dt.datetime(2300, 1, 1),
    timezones=st.none() | st.timezones() | st.builds(dt.timezone, _offsets),
)
_finite = st.none() | st.floats(0, 1e12) | st.integers(0, 2**40) | st.just(float("nan"))
_numbers = st.none() | st.floats() | st.integers(-(2**60), 2**60) | st.floats(0, 1e9)
_anything = st.none() | _messy_text | _numbers | st.booleans() | _moments


def _value_for(kind: Kind, clean: bool):
    """What a validated request holds for this kind (``clean``), or sometimes anything at all."""
    usual = {
        Kind.ID: st.none() | _messy_text | st.sampled_from(["L1", " L1", "A1", "x"]),
        Kind.CATEGORY: st.none() | _messy_text | st.sampled_from(["Web", " REFERRAL ", "web", "", "  "]),
        Kind.TIMESTAMP: st.none() | (_in_range if clean else _moments),
        Kind.NUMBER: _finite if clean else _numbers,
    }[kind]
    return usual if clean else st.one_of(usual, usual, _anything)


@st.composite
def _records(draw, table: str, clean: bool):
    """Records of ``table``; ``clean`` ones look like a validated request (required values
    present, unique ids, timestamps in range, one kind per custom field) but stay messy in
    case, spaces, offsets and gaps."""
    spec = TABLES[table]
    n = draw(st.integers(0, 4))
    customs = draw(st.lists(st.sampled_from(["tier", "budget_k", "campaign"]), unique=True, max_size=3))
    kinds = {c: draw(st.sampled_from([None, Kind.CATEGORY, Kind.NUMBER])) for c in customs}
    if clean:
        per_column = {c: (_finite if k is not Kind.CATEGORY else st.none() | _messy_text) for c, k in kinds.items()}
    else:
        per_column = {c: draw(st.sampled_from([st.none() | _messy_text, _numbers, _anything])) for c in customs}
    records = []
    for i in range(n):
        row = {}
        for col in spec.columns:
            if clean and col.required:
                if col.kind is Kind.TIMESTAMP:
                    row[col.name] = draw(_in_range)
                else:
                    row[col.name] = draw(st.sampled_from([f" Id{i}", f"ID{i} ", f"x{i}"])) if col.unique else "Email"
            elif col.name == spec.key and draw(st.booleans()):
                row[col.name] = f" Id{i} "
            elif draw(st.integers(0, 5)):  # a key may be absent
                row[col.name] = draw(_value_for(col.kind, clean))
        if clean and table == "leads":  # converted or disqualified after creation, in any offset
            for later in ("converted_at", "disqualified_at"):
                if row.get(later) is not None:
                    after = row["created_at"] + draw(st.timedeltas(dt.timedelta(0), dt.timedelta(days=400)))
                    row[later] = after.astimezone(draw(_minute_offsets)) if after.tzinfo else after
        for c in customs:
            if draw(st.integers(0, 4)):
                row[c] = draw(per_column[c])
        records.append(row)
    return records, {c: k for c, k in kinds.items() if k is not None}


def _as_csv_text(records: list[dict]) -> pd.DataFrame:
    """The records as the API typed them before coerce_records: datetimes as ISO text, one frame."""
    return pd.DataFrame([{k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in r.items()} for r in records])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), table=st.sampled_from(["leads", "accounts", "activities"]), clean=st.booleans())
def test_coerce_records_equals_coerce_table(data, table, clean) -> None:
    records, kinds = data.draw(_records(table, clean))
    frame = _as_csv_text(records) if records else pd.DataFrame(columns=TABLES[table].column_names)
    try:
        expected, expected_bad = coerce_table(table, frame, row_offset=0, custom_kinds=kinds)
    except (MissingColumn, ExportSourceError) as exc:
        with pytest.raises(type(exc)):
            coerce_records(table, records, custom_kinds=kinds)
        return

    typed, bad = coerce_records(table, records, custom_kinds=kinds)

    pd.testing.assert_frame_equal(typed, expected)
    assert [(b.table, b.row, b.column, b.reason, b.value) for b in bad] == [
        (b.table, b.row, b.column, b.reason, b.value) for b in expected_bad
    ]


def _api_records() -> dict[str, list[dict]]:
    """Records as a validated scoring request holds them: messy case, spaces, offsets, gaps, custom fields."""
    berlin = dt.timezone(dt.timedelta(hours=1))
    return {
        "leads": [
            {"lead_id": " L1 ", "created_at": dt.datetime(2024, 1, 3, 8, tzinfo=berlin), "account_id": "A1",
             "owner_id": "rep_1", "source": "  Web ", "seniority": "VP", "country": None, "converted_at": None,
             "opportunity_id": None, "disqualified_at": None, "budget_k": 12, "campaign": " Spring SALE"},
            {"lead_id": "L2", "created_at": dt.datetime(2024, 1, 4, 23, 59, 59, 999999), "account_id": None,
             "owner_id": None, "source": "", "seniority": "ſtraße", "country": "de", "converted_at": None,
             "opportunity_id": None, "disqualified_at": dt.datetime(2024, 2, 1, tzinfo=dt.UTC), "budget_k": None},
        ],
        "accounts": [
            {"account_id": "A1", "created_at": dt.datetime(2023, 5, 1), "industry": " SoftWare", "country": "US",
             "employees": 120.0, "annual_revenue": None, "tier": None},
        ],
        "activities": [
            {"activity_id": "X1", "occurred_at": dt.datetime(2024, 1, 5, 9, 30, tzinfo=berlin), "type": "Email ",
             "lead_id": "L1", "opportunity_id": None, "account_id": None, "direction": "INBOUND", "score": 3.5},
            {"activity_id": "X2", "occurred_at": dt.datetime(2024, 1, 6), "type": "call", "lead_id": "L2",
             "opportunity_id": None, "account_id": None, "direction": None, "score": None},
        ],
    }


@pytest.mark.parametrize("table", ["leads", "accounts", "activities"])
def test_api_records_are_typed_without_coerce_table_and_equal_it(table, monkeypatch) -> None:
    records = _api_records()[table]
    kinds = {"budget_k": Kind.NUMBER, "campaign": Kind.CATEGORY, "tier": Kind.CATEGORY}
    expected, expected_bad = coerce_table(table, _as_csv_text(records), row_offset=0, custom_kinds=kinds)
    assert expected_bad == []

    def not_called(*args, **kwargs):
        raise AssertionError("valid API records should not need coerce_table")

    monkeypatch.setattr(io_module, "coerce_table", not_called)
    typed, bad = coerce_records(table, records, custom_kinds=kinds)

    assert bad == []
    pd.testing.assert_frame_equal(typed, expected)


def test_coerce_records_reports_bad_values_like_coerce_table() -> None:
    records = [
        {"lead_id": "L1", "created_at": dt.datetime(1500, 1, 1), "budget_k": "lots"},
        {"lead_id": " L1", "created_at": dt.datetime(2024, 1, 1), "converted_at": dt.datetime(2023, 1, 1)},
    ]
    _, bad = coerce_records("leads", records, custom_kinds={"budget_k": Kind.NUMBER})

    assert sorted((b.row, b.column, b.reason) for b in bad) == [
        (0, "budget_k", REASON_BAD_NUMBER),
        (0, "created_at", REASON_BAD_TIMESTAMP),
        (1, "converted_at", "converted_at before created_at"),
        (1, "lead_id", REASON_DUPLICATE),
    ]


def test_out_of_range_timestamps_are_bad_not_crashes() -> None:
    frame = pd.DataFrame([{"account_id": "A", "created_at": "9999-12-31"}])
    typed, bad = coerce_table("accounts", frame)
    assert [(b.column, b.reason) for b in bad] == [("created_at", REASON_BAD_TIMESTAMP)]
    assert typed["created_at"].dtype == "datetime64[ns, UTC]"


def test_loading_100k_activities_is_fast(tmp_path: Path) -> None:
    import time

    n = 100_000
    tables = base_tables()
    write_tables(tmp_path / "e", tables)
    ids = np.arange(n).astype(str)
    pd.DataFrame({
        "activity_id": np.char.add("X", ids),
        "occurred_at": pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.arange(n), unit="min"),
        "type": np.where(np.arange(n) % 2 == 0, " Email", "CALL"),
        "lead_id": np.where(np.arange(n) % 3 == 0, "L1", ""),
        "opportunity_id": np.where(np.arange(n) % 3 == 1, "O2", ""),
        "account_id": np.where(np.arange(n) % 3 == 2, "007", ""),
        "direction": "inbound",
        "score": "",
    }).to_csv(tmp_path / "e" / "activities.csv", index=False)

    start = time.perf_counter()
    export, report = load_export(tmp_path / "e")
    elapsed = time.perf_counter() - start

    assert not report and len(export.activities) == n
    assert elapsed < 5.0, f"loading {n} activities took {elapsed:.1f}s"


# --------------------------------------------------------------------------------------------
# garbage in, a report out
# --------------------------------------------------------------------------------------------

_CELLS = [(t, i, c) for t, rows in base_tables().items() for i, row in enumerate(rows) for c in row]
_garbage = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.sampled_from(["", " ", "nan", "NULL", "-1", "1e400", "007", "2024-02-30", "9999-12-31T00:00:00Z",
                     "2024-01-01T25:00", "won", "OPEN", "L1", "O2", "A2", "inf", "0x1F", "1,5"]),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.sampled_from(_CELLS), _garbage), min_size=1, max_size=4))
def test_garbage_cells_give_a_clean_load_or_a_validation_error(edits) -> None:
    tables = copy.deepcopy(base_tables())
    for (table, index, column), value in edits:
        tables[table][index][column] = value
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tables(Path(tmp) / "e", tables)
        try:
            export, report = load_export(folder)
        except ExportValidationError as err:
            assert err.report.bad_rows
            skipped, report = load_export(folder, skip_bad_rows=True)
            assert report.skipped
            for name in CORE:
                bad = {b.row for b in report.bad_rows if b.table == name}
                assert len(skipped.table(name)) == len(tables[name]) - len(bad)
        else:
            assert not report
            assert export.accounts["created_at"].dtype == "datetime64[ns, UTC]"

"""Adapters: hand-made Salesforce / HubSpot exports in tmp_path, and small slices of the public datasets
(skipped when ../shared/data is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from features.adapters import (
    REASON_NO_SOURCE_COLUMN,
    REASON_NOT_MAPPED,
    REASON_UNMAPPED_VALUE,
    MappingError,
    builtin_mappings,
    import_export,
    load_mapping,
    parse_mapping,
    read_field_history,
    read_import_info,
    snake_case,
    write_import,
)
from features.errors import ExportValidationError
from features.io import load_export

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (public datasets) not present")


def _csv(folder: Path, name: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / name, index=False)


# --------------------------------------------------------------------------------------------
# Salesforce
# --------------------------------------------------------------------------------------------


@pytest.fixture
def salesforce(tmp_path: Path) -> Path:
    d = tmp_path / "sf"
    _csv(d, "Account.csv", [
        {"Id": "001A", "CreatedDate": "2024-01-02T09:00:00.000Z", "Industry": "Software", "BillingCountry": "DE",
         "NumberOfEmployees": "120", "AnnualRevenue": "5000000", "Type": "Customer"},
    ])
    _csv(d, "Lead.csv", [
        {"Id": "00QA", "CreatedDate": "2024-01-05T10:00:00.000Z", "LastModifiedDate": "2024-02-01T10:00:00.000Z",
         "OwnerId": "005X", "LeadSource": "Web", "Status": "Closed - Converted", "Rating": "Hot",
         "Country": "Germany", "IsConverted": "true", "ConvertedDate": "2024-01-20",
         "ConvertedAccountId": "001A", "ConvertedOpportunityId": "006A", "LastActivityDate": "2024-01-25",
         "Industry": "Software", "Title": "CTO", "IsDeleted": "false"},
        {"Id": "00QB", "CreatedDate": "2024-01-06T10:00:00.000Z", "LastModifiedDate": "2024-03-01T08:00:00.000Z",
         "OwnerId": "005Y", "LeadSource": "Purchased List", "Status": "Closed - Not Converted", "Rating": "Cold",
         "Country": "", "IsConverted": "false", "ConvertedDate": "", "ConvertedAccountId": "",
         "ConvertedOpportunityId": "", "LastActivityDate": "", "Industry": "", "Title": "", "IsDeleted": "false"},
        {"Id": "00QC", "CreatedDate": "2024-02-06T10:00:00.000Z", "LastModifiedDate": "2024-02-06T10:00:00.000Z",
         "OwnerId": "005Y", "LeadSource": "Trade Show", "Status": "Open - Not Contacted", "Rating": "",
         "Country": "France", "IsConverted": "false", "ConvertedDate": "", "ConvertedAccountId": "",
         "ConvertedOpportunityId": "", "LastActivityDate": "", "Industry": "", "Title": "VP Sales", "IsDeleted": "false"},
    ])
    _csv(d, "Opportunity.csv", [
        {"Id": "006A", "AccountId": "001A", "CreatedDate": "2024-01-20T11:00:00.000Z", "OwnerId": "005X",
         "Type": "New Customer", "Amount": "25000", "CloseDate": "2024-03-15", "StageName": "Closed Won",
         "LeadSource": "Web", "ForecastCategoryName": "Closed", "IsDeleted": "false"},
        {"Id": "006B", "AccountId": "001A", "CreatedDate": "2024-03-20T11:00:00.000Z", "OwnerId": "005X",
         "Type": "Existing Customer - Upgrade", "Amount": "8000", "CloseDate": "2024-06-30",
         "StageName": "Proposal/Price Quote", "LeadSource": "", "ForecastCategoryName": "Pipeline", "IsDeleted": "false"},
    ])
    _csv(d, "OpportunityHistory.csv", [
        {"OpportunityId": "006A", "StageName": "Prospecting", "CreatedDate": "2024-01-20T11:00:00.000Z",
         "Amount": "20000", "CloseDate": "2024-03-01", "IsDeleted": "false"},
        {"OpportunityId": "006A", "StageName": "Negotiation/Review", "CreatedDate": "2024-02-20T11:00:00.000Z",
         "Amount": "25000", "CloseDate": "2024-03-15", "IsDeleted": "false"},
        {"OpportunityId": "006A", "StageName": "Closed Won", "CreatedDate": "2024-03-15T16:00:00.000Z",
         "Amount": "25000", "CloseDate": "2024-03-15", "IsDeleted": "false"},
        {"OpportunityId": "006B", "StageName": "Proposal/Price Quote", "CreatedDate": "2024-03-20T11:00:00.000Z",
         "Amount": "8000", "CloseDate": "2024-06-30", "IsDeleted": "false"},
    ])
    _csv(d, "Task.csv", [
        {"Id": "00TA", "WhoId": "00QA", "WhatId": "", "AccountId": "", "CreatedDate": "2024-01-08T10:00:00.000Z",
         "CompletedDateTime": "2024-01-08T10:30:00.000Z", "TaskSubtype": "Call", "CallType": "Outbound"},
        {"Id": "00TB", "WhoId": "003C", "WhatId": "006A", "AccountId": "001A", "CreatedDate": "2024-02-02T10:00:00.000Z",
         "CompletedDateTime": "", "TaskSubtype": "Email", "CallType": ""},
    ])
    _csv(d, "Event.csv", [
        {"Id": "00UA", "WhoId": "00QA", "WhatId": "", "AccountId": "", "StartDateTime": "2024-01-15T14:00:00.000Z",
         "ActivityDateTime": "2024-01-15T14:00:00.000Z", "ActivityDate": "2024-01-15"},
    ])
    _csv(d, "LeadHistory.csv", [
        {"Id": "017A", "LeadId": "00QA", "Field": "Rating", "OldValue": "Warm", "NewValue": "Hot",
         "CreatedDate": "2024-01-22T09:00:00.000Z"},
        {"Id": "017B", "LeadId": "00QB", "Field": "LeadSource", "OldValue": "", "NewValue": "Purchased List",
         "CreatedDate": "2024-01-06T10:00:00.000Z"},
    ])
    return d


def test_salesforce_standard_objects_import(salesforce: Path):
    r = import_export("salesforce", salesforce)
    assert not r.report and r.synthetic == []
    leads = r.export.leads.set_index("lead_id")
    assert list(leads.index) == ["00QA", "00QB", "00QC"]
    # a date is the end of that day: never before the lead's creation, never known early
    assert leads.loc["00QA", "converted_at"] == pd.Timestamp("2024-01-21", tz="UTC")
    assert pd.isna(leads.loc["00QA", "disqualified_at"])
    assert leads.loc["00QB", "disqualified_at"] == pd.Timestamp("2024-03-01T08:00:00", tz="UTC")
    assert pd.isna(leads.loc["00QC", "converted_at"]) and pd.isna(leads.loc["00QC", "disqualified_at"])
    assert list(leads["source"]) == ["web", "purchased_list", "event"]
    assert leads.loc["00QA", "account_id"] == "001A" and leads.loc["00QA", "opportunity_id"] == "006A"
    assert {"rating", "title", "industry", "last_activity_date"} <= set(leads.columns)
    assert "status" not in leads.columns  # the outcome-bearing Status is never a feature

    opps = r.export.opportunities.set_index("opportunity_id")
    assert opps.loc["006A", ["stage", "outcome", "type"]].tolist() == ["won", "won", "new"]
    assert opps.loc["006A", "closed_at"] == pd.Timestamp("2024-03-16", tz="UTC")
    assert pd.isna(opps.loc["006A", "expected_close_date"])
    assert opps.loc["006B", ["stage", "outcome", "type"]].tolist() == ["proposal", "open", "upsell"]
    assert opps.loc["006B", "expected_close_date"] == pd.Timestamp("2024-06-30", tz="UTC")
    assert list(r.export.stage_history["stage"]) == ["qualification", "contract", "won", "proposal"]

    acts = r.export.activities.set_index("activity_id")
    assert acts.loc["00TA", ["type", "lead_id", "direction"]].tolist() == ["call", "00QA", "outbound"]
    assert acts.loc["00TA", "occurred_at"] == pd.Timestamp("2024-01-08T10:30:00", tz="UTC")  # completed time
    assert pd.isna(acts.loc["00TB", "lead_id"])  # a contact (003...) is not a lead
    assert acts.loc["00TB", "opportunity_id"] == "006A"
    assert acts.loc["00TB", "occurred_at"] == pd.Timestamp("2024-02-02T10:00:00", tz="UTC")  # created time
    assert acts.loc["00UA", "type"] == "meeting"

    h = r.field_history
    assert list(h["field"]) == ["rating", "source"] and set(h["record_table"]) == {"leads"}


def test_written_import_loads_back_identically(salesforce: Path, tmp_path: Path):
    r = import_export("salesforce", salesforce)
    out = write_import(r, tmp_path / "out")
    export, report = load_export(out)
    assert not report
    for name in ("accounts", "leads", "opportunities", "stage_history", "activities"):
        pd.testing.assert_frame_equal(export.table(name), r.export.table(name), check_dtype=False)
    info = read_import_info(out)
    assert info["mapping"] == "salesforce" and info["rows"]["leads"] == 3
    assert len(read_field_history(out)) == 2


def _set_cell(folder: Path, file: str, row: int, column: str, value: str) -> None:
    """Change one cell of a source file, as a typo in the CRM would."""
    frame = pd.read_csv(folder / file, dtype=str, keep_default_na=False)
    frame.loc[row, column] = value
    frame.to_csv(folder / file, index=False)


def test_unparseable_value_is_a_bad_row_of_the_source_file(salesforce: Path):
    _set_cell(salesforce, "Lead.csv", 1, "CreatedDate", "last tuesday")
    with pytest.raises(ExportValidationError) as exc:
        import_export("salesforce", salesforce)
    bad = exc.value.report.bad_rows
    assert [(b.table, b.row, b.column) for b in bad] == [("Lead.csv", 2, "CreatedDate")]
    assert "leads.created_at" in bad[0].reason and bad[0].value == "last tuesday"
    r = import_export("salesforce", salesforce, skip_bad_rows=True)
    assert list(r.export.leads["lead_id"]) == ["00QA", "00QC"]
    assert r.report.skipped and sum(r.report.counts_by_reason().values()) >= 1


def test_unknown_stage_is_reported_not_guessed(salesforce: Path):
    _set_cell(salesforce, "Opportunity.csv", 1, "StageName", "Almost There")
    with pytest.raises(ExportValidationError) as exc:
        import_export("salesforce", salesforce)
    first = exc.value.report.bad_rows[0]
    assert (first.table, first.row, first.column) == ("Opportunity.csv", 2, "StageName")
    assert REASON_UNMAPPED_VALUE in first.reason
    # with skipping, the deal goes, and so do the rows pointing at it, each with its reason
    r = import_export("salesforce", salesforce, skip_bad_rows=True)
    assert list(r.export.opportunities["opportunity_id"]) == ["006A"]
    assert "006B" not in set(r.export.stage_history["opportunity_id"])
    assert any("skipped row" in reason for _, reason in r.report.counts_by_reason())


def test_missing_required_source_column_fails_even_when_skipping(salesforce: Path):
    acc = pd.read_csv(salesforce / "Account.csv", dtype=str).drop(columns=["CreatedDate"])
    acc.to_csv(salesforce / "Account.csv", index=False)
    with pytest.raises(ExportValidationError) as exc:
        import_export("salesforce", salesforce, skip_bad_rows=True)
    bad = exc.value.report.bad_rows[0]
    assert (bad.table, bad.row, bad.column) == ("Account.csv", 0, "CreatedDate")
    assert REASON_NO_SOURCE_COLUMN in bad.reason


def test_optional_files_may_be_absent(salesforce: Path):
    for f in ("Task.csv", "Event.csv", "OpportunityHistory.csv", "LeadHistory.csv"):
        (salesforce / f).unlink()
    r = import_export("salesforce", salesforce)
    assert r.export.activities.empty and r.export.stage_history.empty and r.field_history is None
    assert any("Task.csv not found" in n for n in r.notes)


def test_required_contract_column_not_mapped_is_a_bad_row(salesforce: Path):
    doc = {"tables": {"leads": {"file": "Lead.csv", "columns": {"lead_id": "Id"}}}}
    with pytest.raises(ExportValidationError) as exc:
        import_export(parse_mapping(doc), salesforce)
    bad = exc.value.report.bad_rows[0]
    assert (bad.row, bad.column) == (0, "created_at") and REASON_NOT_MAPPED in bad.reason


def test_assumed_value_is_listed_as_synthetic_with_its_reason(salesforce: Path):
    doc = {"tables": {"leads": {"file": "Lead.csv", "columns": {
        "lead_id": "Id", "created_at": "CreatedDate",
        "disqualified_at": {"from": "created_at", "offset": "30d", "assumed": "no disqualification time here",
                            "when": {"column": "IsConverted", "in": ["false"]}}}}}}
    r = import_export(parse_mapping(doc), salesforce, skip_bad_rows=True)
    assert r.synthetic == ["leads.disqualified_at"]
    assert any(n.startswith("leads.disqualified_at is SYNTHETIC") and "no disqualification time here" in n
               for n in r.notes)
    leads = r.export.leads.set_index("lead_id")
    assert leads.loc["00QB", "disqualified_at"] - leads.loc["00QB", "created_at"] == pd.Timedelta(days=30)
    # without 'assumed', the same derivation from a real timestamp is not listed
    del doc["tables"]["leads"]["columns"]["disqualified_at"]["assumed"]
    assert import_export(parse_mapping(doc), salesforce, skip_bad_rows=True).synthetic == []


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"tables": {"deals": {"file": "x.csv", "columns": {}}}}, "unknown table"),
        ({"tables": {"leads": {"file": "x.csv", "columns": {"lead_id": {"colum": "Id"}}}}}, "unknown key"),
        ({"tables": {"leads": {"file": "x.csv", "columns": {"budget": "Budget"}}}}, "not a column of leads"),
        ({"tables": {"leads": {"file": "x.csv", "columns": {"created_at": {"synthetic": {"start": "2020-01-01"}}}}}},
         "every"),
        ({"tables": {"leads": {"file": "x.csv", "columns": {"lead_id": {"column": "Id", "value": "1"}}}}},
         "exactly one"),
    ],
)
def test_mapping_errors_name_the_problem(doc, message):
    with pytest.raises(MappingError, match=message):
        parse_mapping(doc)


def test_every_builtin_mapping_parses():
    assert set(builtin_mappings()) >= {"salesforce", "hubspot", "xeducation", "maven_crm", "olist"}
    for name in builtin_mappings():
        assert load_mapping(name).tables


def test_snake_case():
    assert snake_case("Lead Quality") == "lead_quality"
    assert snake_case("TotalVisits") == "total_visits"
    assert snake_case("Country/Region") == "country_region"


# --------------------------------------------------------------------------------------------
# HubSpot
# --------------------------------------------------------------------------------------------


def test_hubspot_exports_import(tmp_path: Path):
    d = tmp_path / "hs"
    _csv(d, "companies.csv", [{"Record ID": "901", "Create Date": "2024-01-01 08:00", "Industry": "COMPUTER_SOFTWARE",
                               "Country/Region": "United States", "Number of Employees": "50", "Annual Revenue": ""}])
    _csv(d, "contacts.csv", [
        {"Record ID": "11", "Create Date": "2024-01-03 09:30", "Associated Company IDs": "901;902",
         "Contact owner": "Ana Lima", "Original Source": "Paid Search", "Country/Region": "United States",
         "Became an Opportunity Date": "2024-01-10 12:00", "Associated Deal IDs": "501", "Job Title": "Head of IT",
         "Lead Status": "Connected", "HubSpot Score": "45", "Last Activity Date": "2024-01-12 10:00"},
        {"Record ID": "12", "Create Date": "2024-01-04 09:30", "Associated Company IDs": "",
         "Contact owner": "Ana Lima", "Original Source": "Organic Search", "Country/Region": "",
         "Became an Opportunity Date": "", "Associated Deal IDs": "", "Job Title": "",
         "Lead Status": "New", "HubSpot Score": "5", "Last Activity Date": ""},
    ])
    _csv(d, "deals.csv", [{"Record ID": "501", "Associated Company IDs": "901", "Create Date": "2024-01-10 12:00",
                           "Associated Contact IDs": "11", "Deal owner": "Ana Lima", "Deal Type": "New Business",
                           "Amount": "12000", "Deal Stage": "Closed Won", "Close Date": "2024-02-01 15:00",
                           "Pipeline": "Sales Pipeline", "Forecast category": "Closed won"}])
    _csv(d, "deal_stage_history.csv", [
        {"deal_id": "501", "value": "appointmentscheduled", "timestamp": "2024-01-10T12:00:00Z"},
        {"deal_id": "501", "value": "contractsent", "timestamp": "2024-01-25T12:00:00Z"},
        {"deal_id": "501", "value": "closedwon", "timestamp": "2024-02-01T15:00:00Z"},
    ])
    _csv(d, "engagements.csv", [
        {"id": "1", "type": "INCOMING_EMAIL", "timestamp": "1704880800000", "contactIds": "11", "companyIds": "",
         "dealIds": ""},
        {"id": "2", "type": "MEETING", "timestamp": "1705572000000", "contactIds": "11", "companyIds": "901",
         "dealIds": "501"},
    ])
    r = import_export("hubspot", d)
    assert not r.report
    leads = r.export.leads.set_index("lead_id")
    assert leads.loc["11", "account_id"] == "901"  # first of a multi-valued association
    assert list(leads["source"]) == ["paid_search", "web"]
    assert leads.loc["11", "converted_at"] == pd.Timestamp("2024-01-10T12:00", tz="UTC")
    assert {"lead_status", "hubspot_score", "job_title"} <= set(leads.columns)
    opp = r.export.opportunities.iloc[0]
    assert (opp["stage"], opp["outcome"], opp["type"], opp["lead_id"]) == ("won", "won", "new", "11")
    assert list(r.export.stage_history["stage"]) == ["qualification", "contract", "won"]
    acts = r.export.activities.set_index("activity_id")
    assert acts.loc["1", ["type", "direction"]].tolist() == ["email", "inbound"]
    assert acts.loc["1", "occurred_at"] == pd.Timestamp(1704880800000, unit="ms", tz="UTC")
    assert acts.loc["2", ["type", "opportunity_id"]].tolist() == ["meeting", "501"]


# --------------------------------------------------------------------------------------------
# the public datasets (small slices)
# --------------------------------------------------------------------------------------------


def _slice(src: Path, dest: Path, rows: dict[str, int | None]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name, n in rows.items():
        frame = pd.read_csv(src / name, dtype=str, keep_default_na=False)
        (frame if n is None else frame.head(n)).to_csv(dest / name, index=False)
    return dest


@needs_data
def test_xeducation_slice_has_stated_synthetic_time(tmp_path: Path):
    d = _slice(DATA / "xeducation_leads", tmp_path / "xe", {"Leads.csv": 400})
    r = import_export("xeducation", d)
    assert not r.report
    assert r.synthetic == ["leads.created_at", "leads.converted_at", "leads.disqualified_at"]
    assert any("SYNTHETIC" in n and "record order" in n for n in r.notes)
    leads = r.export.leads
    raw = pd.read_csv(d / "Leads.csv")
    # created_at follows Lead Number; every lead is decided 14 days later; converted iff Converted == 1
    assert (leads["created_at"].rank().to_numpy() == raw["Lead Number"].rank().to_numpy()).all()
    decided = leads["converted_at"].fillna(leads["disqualified_at"])
    assert ((decided - leads["created_at"]) == pd.Timedelta(days=14)).all()
    assert (leads["converted_at"].notna().to_numpy() == (raw["Converted"] == 1).to_numpy()).all()
    assert "converted" not in leads.columns and "lead_number" not in leads.columns  # the label is no feature
    assert leads["specialization"].isna().any()  # "Select" is missing
    assert not (leads["specialization"] == "select").any()
    assert r.export.activities.empty and r.export.opportunities.empty


@needs_data
def test_maven_slice_reports_undated_deals(tmp_path: Path):
    src = DATA / "maven_crm"
    d = _slice(src, tmp_path / "maven", {"sales_pipeline.csv": None, "accounts.csv": None, "products.csv": None,
                                         "sales_teams.csv": None})
    pipe = pd.read_csv(d / "sales_pipeline.csv", dtype=str, keep_default_na=False)
    pipe = pd.concat([pipe.head(200), pipe[pipe["deal_stage"] == "Prospecting"].head(5)])
    pipe.to_csv(d / "sales_pipeline.csv", index=False)
    with pytest.raises(ExportValidationError) as exc:
        import_export("maven_crm", d)
    assert any(b.column == "engage_date" and b.row > 200 for b in exc.value.report.bad_rows)
    r = import_export("maven_crm", d, skip_bad_rows=True)
    opps = r.export.opportunities
    assert len(r.export.leads) == 200 and set(opps["outcome"]) <= {"won", "lost", "open"}
    gtx = opps[opps["product"] == "gtx pro"]
    assert len(gtx) and (gtx["amount"] == 4821).all()  # the GTXPro spelling and the list price
    assert "technolgy" not in set(r.export.accounts["industry"])
    won = r.export.leads[r.export.leads["converted_at"].notna()]
    assert set(won["lead_id"]) == set(opps.loc[opps["outcome"] == "won", "opportunity_id"])


@needs_data
def test_olist_slice(tmp_path: Path):
    d = _slice(DATA / "olist_marketing_funnel", tmp_path / "olist",
               {"olist_marketing_qualified_leads_dataset.csv": 600, "olist_closed_deals_dataset.csv": None})
    r = import_export("olist", d, skip_bad_rows=True)
    leads = r.export.leads
    assert len(leads) >= 599
    conv = leads["converted_at"].notna()
    assert conv.any() and (leads.loc[conv, "converted_at"] >= leads.loc[conv, "created_at"]).all()
    # seller traits exist only for closed deals: that is the leak the audit must see
    assert leads.loc[~conv, "business_segment"].isna().all() and leads.loc[conv, "business_segment"].notna().any()


def test_cli_import_and_help(salesforce: Path, tmp_path: Path, capsys):
    from training.cli import build_parser, main

    for cmd in ("import", "audit"):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([cmd, "--help"])
        assert exc.value.code == 0
    out = tmp_path / "export"
    assert main(["import", "--mapping", "salesforce", "--in", str(salesforce), "--out", str(out)]) == 0
    assert (out / "leads.csv").exists() and json.loads((out / "IMPORT.json").read_text())["mapping"] == "salesforce"
    assert main(["import", "--list"]) == 0
    assert "xeducation" in capsys.readouterr().out

"""Reading, validating and writing a CRM export (the data contract, ``shared/spec/data-contract.md``).

This is the only module of ``features`` that touches files or databases. Three public functions:

* :func:`load_export` reads a folder (``<table>.csv`` or ``<table>.parquet``) or a SQLAlchemy URL,
  types every table (:func:`coerce_table`), checks foreign keys and either raises
  :class:`~features.errors.ExportValidationError` or, with ``skip_bad_rows``, drops exactly the
  bad rows and says so in the :class:`~features.errors.ValidationReport`.
* :func:`coerce_table` types one table and applies the row-level rules (no foreign keys). The API
  uses it on records a CRM sends as JSON, so the same normalisation applies online and offline.
* :func:`write_export` writes an :class:`~features.contract.Export` back as CSV, Parquet or SQL
  tables; ``load_export`` reads it back identically.

Typed output is described at the top of :mod:`features.contract`. Every broken rule is one
:class:`~features.errors.BadRow` whose ``row`` is the 1-based data row of the source (header not
counted; for SQL, the order the database returned). The ``reason`` strings are the module
constants below (``REASON_*``), plus ``"below the minimum <m>"`` and ``"<column> before created_at"``.
"""

from __future__ import annotations

import datetime
import functools

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from features.contract import (
    DEFAULT_OPEN_STAGES,
    FOREIGN_KEYS,
    OUTCOMES,
    TABLES,
    TERMINAL_STAGES,
    Column,
    Export,
    Kind,
    TableSpec,
    custom_columns,
    normalize_category,
)
from features.errors import (
    BadRow,
    ExportSourceError,
    ExportValidationError,
    MissingColumn,
    MissingTable,
    ValidationReport,
)
from features.values import TS_MAX, TS_MIN, NotSimple, category_value, number_value, text_value, timestamp_ns

__all__ = [
    "REASON_BAD_DATE",
    "REASON_BAD_NUMBER",
    "REASON_BAD_TIMESTAMP",
    "REASON_CLOSED_WITHOUT_CLOSED_AT",
    "REASON_DUPLICATE",
    "REASON_FK_NOWHERE",
    "REASON_FK_SKIPPED",
    "REASON_MISSING",
    "REASON_NO_LINK",
    "REASON_OPEN_WITH_CLOSED_AT",
    "REASON_STAGE_OUTCOME",
    "REASON_UNKNOWN_OUTCOME",
    "REASON_UNKNOWN_STAGE",
    "coerce_records",
    "coerce_table",
    "load_export",
    "write_export",
]

REASON_MISSING = "missing required value"
REASON_DUPLICATE = "duplicate id"
REASON_BAD_TIMESTAMP = "not an ISO 8601 timestamp (or outside 1677-2262)"
REASON_BAD_DATE = "not a YYYY-MM-DD date (or outside 1677-2262)"
REASON_BAD_NUMBER = "not a finite number"
REASON_UNKNOWN_OUTCOME = "unknown outcome (expected open, won or lost)"
REASON_UNKNOWN_STAGE = "stage is neither a configured open stage nor won/lost"
REASON_CLOSED_WITHOUT_CLOSED_AT = "won or lost without closed_at"
REASON_OPEN_WITH_CLOSED_AT = "open deal with closed_at"
REASON_STAGE_OUTCOME = "stage inconsistent with outcome"
REASON_NO_LINK = "activity linked to no lead, opportunity or account"
REASON_FK_NOWHERE = "foreign key points nowhere"
REASON_FK_SKIPPED = "foreign key points to a skipped row"

#: The column named in a BadRow about an activity with no link at all.
NO_LINK_COLUMN = "lead_id/opportunity_id/account_id"

ACTIVITY_LINKS = ("lead_id", "opportunity_id", "account_id")  # an activity links to one of them at least
_TABLE_ORDER = {name: i for i, name in enumerate(TABLES)}
# dtype objects, not their names: resolving "str" or "datetime64[ns, UTC]" costs pandas 30-60 us a call,
# and typing one API request's records resolves them dozens of times
_UTC_NS = pd.DatetimeTZDtype(unit="ns", tz="UTC")
_STR = pd.api.types.pandas_dtype("str")


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def load_export(
    source: str | Path,
    *,
    open_stages: Sequence[str] = DEFAULT_OPEN_STAGES,
    skip_bad_rows: bool = False,
    exported_at: pd.Timestamp | None = None,
) -> tuple[Export, ValidationReport]:
    """Read, type and validate a CRM export.

    ``source`` is a folder holding ``<table>.csv`` or ``<table>.parquet`` per table, or a
    SQLAlchemy URL (anything containing ``://``, e.g. ``sqlite:///crm.db``,
    ``postgresql+psycopg://...``) holding one table per name. The five core tables are
    required (:class:`MissingTable`), ``reps`` is optional; a missing required column raises
    :class:`MissingColumn`, an unreadable source :class:`ExportSourceError`.

    Every broken rule becomes a :class:`BadRow`. With bad rows and ``skip_bad_rows=False``,
    :class:`ExportValidationError` is raised with the full report. With ``skip_bad_rows=True``
    exactly the bad rows are dropped, cascading through foreign keys (a row pointing at a
    skipped row is skipped too, until nothing changes), and the report says so
    (``report.skipped``, ``report.summary()``). ``report.row_counts`` counts the rows returned.

    ``exported_at`` defaults to the latest timestamp of any timestamp column (dates excluded),
    floored to the second.
    """
    stages = _normalize_stages(open_stages)
    raw = _read_source(source)

    frames: dict[str, pd.DataFrame] = {}
    customs: dict[str, list[str]] = {}
    bad: list[BadRow] = []
    for name, frame in raw.items():
        typed, rows = coerce_table(name, frame, open_stages=stages, row_offset=1)
        frames[name] = typed
        customs[name] = custom_columns(name, typed)
        bad += rows

    keep = {name: np.ones(len(frame), dtype=bool) for name, frame in frames.items()}
    for b in bad:
        keep[b.table][b.row - 1] = False
    bad += _foreign_key_problems(frames, keep, cascade=skip_bad_rows)
    bad.sort(key=lambda b: (_TABLE_ORDER[b.table], b.row))

    report = ValidationReport(bad_rows=bad, skipped=skip_bad_rows)
    if bad and not skip_bad_rows:
        report.row_counts = {name: len(frame) for name, frame in frames.items()}
        raise ExportValidationError(report)
    if bad:
        frames = {name: frame[keep[name]].reset_index(drop=True) for name, frame in frames.items()}
    report.row_counts = {name: len(frame) for name, frame in frames.items()}

    export = Export(
        accounts=frames["accounts"],
        leads=frames["leads"],
        opportunities=frames["opportunities"],
        stage_history=frames["stage_history"],
        activities=frames["activities"],
        reps=frames.get("reps"),
        open_stages=stages,
        exported_at=_utc(exported_at) if exported_at is not None else _latest_timestamp(frames),
        custom_fields=customs,
    )
    return export, report


def coerce_table(
    table: str,
    frame: pd.DataFrame,
    *,
    open_stages: Sequence[str] = DEFAULT_OPEN_STAGES,
    row_offset: int = 1,
    custom_kinds: Mapping[str, Kind] | None = None,
) -> tuple[pd.DataFrame, list[BadRow]]:
    """Type one contract table and check its row-level rules (everything but foreign keys).

    Returns every input row, in order, with a fresh RangeIndex: contract columns first (a
    missing optional column is added, all missing), then custom columns. Values that could not
    be parsed are missing in the typed frame and reported; ``BadRow.row`` is
    ``row_offset + position`` (1 for a file's first data row, 0 for a 0-based JSON batch).

    Custom columns are float64 when every non-empty value is a finite number, else
    category-normalised ``str``; ``custom_kinds`` can force ``Kind.NUMBER`` or
    ``Kind.CATEGORY`` per column (e.g. the kinds seen in training), in which case a value that
    is not a number is reported.
    """
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; the contract's tables are {', '.join(TABLES)}")
    spec = TABLES[table]
    stages = _normalize_stages(open_stages)
    frame = frame.rename(columns=lambda c: str(c).strip())
    doubled = frame.columns[frame.columns.duplicated()].unique().tolist()
    if doubled:
        raise ExportSourceError(f"table {table!r}", f"column(s) {', '.join(map(repr, doubled))} appear twice")
    for col in spec.columns:
        if col.required and col.name not in frame.columns:
            raise MissingColumn(table, col.name)

    n = len(frame)
    problems = _Problems(table, row_offset)
    typed: dict[str, pd.Series] = {}
    present: dict[str, np.ndarray] = {}
    for col in spec.columns:
        if col.name not in frame.columns:
            typed[col.name] = _empty(col.kind, n)
            present[col.name] = np.zeros(n, dtype=bool)
            continue
        raw = frame[col.name].reset_index(drop=True)
        parsed = _parse(col.kind, raw)
        typed[col.name], present[col.name] = parsed.values, parsed.present
        _check_column(problems, col, raw, parsed, stages if col.name == "stage" else None)

    _check_rows(problems, spec, frame, typed, present, stages)

    out = pd.DataFrame(typed)
    for name in custom_columns(table, frame):
        out[name] = _custom(frame[name].reset_index(drop=True), (custom_kinds or {}).get(name), problems)
    return out, problems.rows


def coerce_records(
    table: str,
    records: Sequence[Mapping[str, object]],
    *,
    open_stages: Sequence[str] = DEFAULT_OPEN_STAGES,
    custom_kinds: Mapping[str, Kind] | None = None,
) -> tuple[pd.DataFrame, list[BadRow]]:
    """Type a few records as a JSON API receives them: the same result as :func:`coerce_table`.

    ``records`` are dicts of Python values (``str``, numbers, ``datetime``, ``None``...); a key
    missing from a record is a missing value, and ``BadRow.row`` is the 0-based record
    position. The result equals ``coerce_table(table, pd.DataFrame(records), row_offset=0)``
    with every ``datetime`` written as ISO 8601 text first (as a CSV carries it); no records
    give the empty typed table.

    Records the API sends are typed value by value in Python, which for one lead is much
    cheaper than :func:`coerce_table`'s column-wise pandas work. Anything outside that path
    (a value of another type, a broken rule, a table with cross-column rules) goes through
    :func:`coerce_table` itself, so the typed frames and the reported rows are identical.
    """
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; the contract's tables are {', '.join(TABLES)}")
    fast = _typed_records(TABLES[table], records, custom_kinds or {}) if table in _RECORD_TABLES else None
    if fast is not None:
        return fast, []
    if not records:
        frame = pd.DataFrame(columns=TABLES[table].column_names)
    else:
        frame = pd.DataFrame([{k: _iso_or_value(v) for k, v in r.items()} for r in records])
    return coerce_table(table, frame, open_stages=open_stages, row_offset=0, custom_kinds=custom_kinds)


#: Tables whose rules :func:`_typed_records` checks in full (no stages, dates or outcomes).
_RECORD_TABLES = ("accounts", "leads", "activities", "reps")
_NAT = np.iinfo(np.int64).min  # NaT as datetime64[ns]


def _iso_or_value(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime.datetime) else value


def _typed_records(spec: TableSpec, records: Sequence[Mapping[str, object]], custom_kinds) -> pd.DataFrame | None:
    """The typed frame of ``records`` value by value, or ``None`` when one needs :func:`coerce_table`.

    Covers what a validated API request holds: text in id and category columns, ``datetime``
    in timestamp columns, finite numbers in number columns, custom fields of one kind (text,
    or numbers), and no broken rule. Trimming and case-folding are Python's ``str.strip`` and
    ``str.casefold``, which pandas' string methods match character for character.
    """
    columns = list(dict.fromkeys(k for r in records for k in r))
    if any(not isinstance(c, str) or c != c.strip() for c in columns):
        return None  # names coerce_table would trim (and maybe find doubled)
    known = set(spec.column_names)
    try:
        typed = {col.name: _typed_column(col, [r.get(col.name) for r in records]) for col in spec.columns}
        for name in columns:
            if name not in known:
                typed[name] = _typed_custom([r.get(name) for r in records], custom_kinds.get(name))
    except NotSimple:
        return None
    n = len(records)
    if spec.name == "leads":
        created = typed["created_at"]
        for later in ("converted_at", "disqualified_at"):
            if (typed[later] < created).any():
                return None
    if spec.name == "activities" and n:
        linked = np.zeros(n, dtype=bool)
        for name in ACTIVITY_LINKS:
            linked |= ~typed[name].isna()
        if not linked.all():
            return None
    return pd.DataFrame(typed)  # from arrays: several times cheaper than from Series


def _typed_column(col: Column, values: list) -> np.ndarray | pd.api.extensions.ExtensionArray:
    """One contract column as the array of its typed frame column."""
    kind = col.kind
    if kind is Kind.TIMESTAMP:
        ns = [timestamp_ns(v) for v in values]
        if col.required and None in ns:
            raise NotSimple
        wall = np.array([v if v is not None else _NAT for v in ns], dtype=np.int64).view("datetime64[ns]")
        return pd.array(wall, dtype=_UTC_NS)
    if kind is Kind.NUMBER:
        v = np.array([number_value(x) for x in values], dtype="float64")
        if col.min_value is not None and (v < col.min_value).any():
            raise NotSimple
        if col.required and np.isnan(v).any():
            raise NotSimple
        return v
    if kind is Kind.ID:
        text = [text_value(v) for v in values]
    elif kind is Kind.CATEGORY:
        text = [category_value(v) for v in values]
    else:  # dates and outcomes are not in the record tables
        raise NotSimple
    if col.required and None in text:
        raise NotSimple
    if col.unique and len(set(text)) < len(text):
        raise NotSimple  # duplicates (missing values are caught above: unique columns are required)
    return pd.array(text, dtype=_STR)


def _typed_custom(values: list, kind: Kind | None) -> np.ndarray | pd.api.extensions.ExtensionArray:
    """A custom field: forced to its training kind, or (no kind) numbers when all are numbers."""
    if kind is Kind.CATEGORY:
        return pd.array([category_value(v) for v in values], dtype=_STR)
    if kind is Kind.NUMBER or all(v is None or isinstance(v, (int, float)) for v in values):
        return np.array([number_value(v) for v in values], dtype="float64")
    raise NotSimple  # text of no known kind: coerce_table decides whether it is all numbers


def write_export(export: Export, dest: str | Path, *, fmt: Literal["csv", "parquet"] = "csv") -> None:
    """Write ``export`` to a folder (``<table>.csv`` or ``<table>.parquet``) or a SQLAlchemy URL.

    Contract columns come first, then custom columns. In CSV, timestamps are ISO 8601 UTC with
    ``Z`` (sub-second digits only when present), dates ``YYYY-MM-DD``, integral numbers without
    ``.0`` and missing values empty. SQL tables are replaced (``fmt`` is ignored). Reading the
    result with :func:`load_export` gives back the same frames.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be 'csv' or 'parquet', not {fmt!r}")
    frames = {}
    for name in TABLES:
        frame = export.table(name)
        if frame is not None:
            known = [c for c in TABLES[name].column_names if c in frame.columns]
            frames[name] = frame[known + custom_columns(name, frame)]

    if isinstance(dest, str) and "://" in dest:
        _write_sql(frames, dest)
        return

    folder = Path(dest)
    folder.mkdir(parents=True, exist_ok=True)
    other = "parquet" if fmt == "csv" else "csv"
    clash = [folder / f"{name}.{other}" for name in frames if (folder / f"{name}.{other}").exists()]
    if clash:
        raise FileExistsError(
            f"{folder} already holds {', '.join(p.name for p in clash)}; writing {fmt} next to it "
            "would make the export ambiguous. Remove those files or write elsewhere."
        )
    for name, frame in frames.items():
        if fmt == "csv":
            _csv_frame(name, frame).to_csv(folder / f"{name}.csv", index=False)
        else:
            frame.to_parquet(folder / f"{name}.parquet", index=False)


# --------------------------------------------------------------------------------------------
# reading sources
# --------------------------------------------------------------------------------------------


def _read_source(source: str | Path) -> dict[str, pd.DataFrame]:
    """The raw frames of every table found, in contract order; raises for missing core tables."""
    if isinstance(source, str) and "://" in source:
        return _read_sql(source)
    return _read_folder(Path(source))


def _read_folder(folder: Path) -> dict[str, pd.DataFrame]:
    if not folder.is_dir():
        raise ExportSourceError(str(folder), "no such folder")
    frames = {}
    for name, spec in TABLES.items():
        csv, parquet = folder / f"{name}.csv", folder / f"{name}.parquet"
        if csv.exists() and parquet.exists():
            raise ExportSourceError(str(folder), f"both {csv.name} and {parquet.name} are present; keep one")
        if csv.exists():
            frames[name] = _read_csv(csv)
        elif parquet.exists():
            try:
                frames[name] = pd.read_parquet(parquet)
            except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
                raise ExportSourceError(str(parquet), f"not a readable Parquet file ({exc})") from exc
        elif spec.required_table:
            raise MissingTable(name, f"{folder} (expected {csv.name} or {parquet.name})")
    return frames


def _read_csv(path: Path) -> pd.DataFrame:
    """Every cell as text, exactly as written: nothing is guessed here."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ExportSourceError(str(path), f"not a readable UTF-8 CSV file ({exc})") from exc


def _read_sql(url: str) -> dict[str, pd.DataFrame]:
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ExportSourceError(url, f"not a SQLAlchemy URL ({exc})") from exc
    where = parsed.render_as_string(hide_password=True)
    db = parsed.database
    if parsed.get_backend_name() == "sqlite" and db and db != ":memory:" and not db.startswith("file:"):
        if not Path(db).exists():  # SQLite would silently create an empty database
            raise ExportSourceError(where, "no such SQLite file")

    engine = sa.create_engine(parsed)
    try:
        with engine.connect() as conn:
            names = set(sa.inspect(conn).get_table_names())
            frames = {}
            for name, spec in TABLES.items():
                if name in names:
                    frame = pd.read_sql_table(name, conn)
                    # a SQL table has no row order (PostgreSQL returns its heap's): read it by its key
                    if spec.key and spec.key in frame:
                        frame = frame.sort_values(spec.key, kind="stable", ignore_index=True)
                    frames[name] = frame
                elif spec.required_table:
                    raise MissingTable(name, where)
    except sa.exc.SQLAlchemyError as exc:
        raise ExportSourceError(where, str(exc).splitlines()[0]) from exc
    finally:
        engine.dispose()
    return frames


# --------------------------------------------------------------------------------------------
# typing one column
# --------------------------------------------------------------------------------------------


@dataclass
class _Parsed:
    values: pd.Series  # typed, unparseable values missing
    present: np.ndarray  # the source cell was not empty
    invalid: np.ndarray  # present but could not be parsed


def _parse(kind: Kind, raw: pd.Series) -> _Parsed:
    if kind is Kind.NUMBER:
        return _parse_numbers(raw)
    if kind is Kind.TIMESTAMP:
        return _parse_timestamps(raw)
    if kind is Kind.DATE:
        return _parse_dates(raw)
    text = _as_text(raw)
    values = normalize_category(text) if kind in (Kind.CATEGORY, Kind.OUTCOME) else text
    present = _mask(values.notna())
    return _Parsed(values, present, np.zeros(len(raw), dtype=bool))


def _is_datetime(dtype) -> bool:
    return isinstance(dtype, pd.DatetimeTZDtype) or (isinstance(dtype, np.dtype) and dtype.kind == "M")


def _is_numeric(dtype) -> bool:
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def _object_kind(raw: pd.Series) -> str:
    return pd.api.types.infer_dtype(raw, skipna=True) if raw.dtype == object else ""


def _as_text(raw: pd.Series) -> pd.Series:
    """Any column as trimmed ``str`` text, empty cells missing; numbers written as a CSV would."""
    dtype = raw.dtype
    if _is_datetime(dtype):
        text = _iso_text(raw)
    elif pd.api.types.is_bool_dtype(dtype):
        text = raw.map({True: "true", False: "false"}).astype("str")
    elif pd.api.types.is_integer_dtype(dtype):
        text = raw.astype("str")
    elif pd.api.types.is_float_dtype(dtype):
        text = _float_text(raw)
    elif dtype != object:  # str, or another extension type
        text = raw.astype("str")
    else:
        kind = _object_kind(raw)
        if kind in ("string", "empty"):
            text = raw.astype("str")
        elif kind == "integer":  # Python ints of any size, written exactly
            text = raw.map(str, na_action="ignore").astype("str")
        elif kind in ("floating", "mixed-integer-float", "decimal"):
            text = _float_text(pd.to_numeric(raw, errors="coerce"))
        elif kind in ("datetime", "datetime64", "date"):
            text = _iso_text(pd.to_datetime(raw, utc=True, errors="coerce"))
        elif kind == "boolean":
            text = raw.map({True: "true", False: "false"}).astype("str")
        else:
            text = raw.map(str, na_action="ignore").astype("str")
    text = text.str.strip()
    return text.where(text != "")


def _float_text(raw: pd.Series) -> pd.Series:
    """Floats as text: integral values without ``.0`` (an id 7.0 from Parquet or SQL is "7")."""
    v = raw.to_numpy(dtype="float64", na_value=np.nan)
    with np.errstate(invalid="ignore"):
        integral = np.isfinite(v) & (np.floor(v) == v) & (np.abs(v) < 2.0**53)
    text = pd.Series(v, index=raw.index).astype("str")
    ints = pd.Series(np.where(integral, v, 0).astype(np.int64), index=raw.index).astype("str")
    return ints.where(integral, text)


def _to_utc(values: pd.Series) -> pd.Series:
    """A datetime column in UTC (naive values are UTC, as the contract says)."""
    if values.dt.tz is None:
        return values.dt.tz_localize("UTC")
    return values.dt.tz_convert("UTC")


def _iso_text(values: pd.Series) -> pd.Series:
    """ISO 8601 UTC text with ``Z``; fractional seconds only when non-zero (up to nanoseconds)."""
    ts = _to_utc(values)
    base = ts.dt.strftime("%Y-%m-%dT%H:%M:%S").astype("str")
    ns = (ts.dt.microsecond * 1000 + ts.dt.nanosecond).fillna(0).astype(np.int64)
    frac = ns.astype("str").str.zfill(9).str.rstrip("0")
    frac = ("." + frac).where(ns > 0, "")
    return (base + frac + "Z").where(ts.notna())


def _in_range(ts: pd.Series) -> pd.Series:
    """Timestamps outside what ``datetime64[ns]`` holds become missing; the result is ns, UTC."""
    ok = ts.isna() | ((ts >= TS_MIN) & (ts <= TS_MAX))
    return ts.where(ok).astype(_UTC_NS)


def _parse_timestamps(raw: pd.Series) -> _Parsed:
    if _is_datetime(raw.dtype):
        values = _in_range(_to_utc(raw))
        present = _mask(raw.notna())
    elif _object_kind(raw) in ("datetime", "datetime64", "date"):
        values = _in_range(pd.to_datetime(raw, utc=True, errors="coerce"))
        present = _mask(raw.notna())
    else:
        text = _as_text(raw)
        values = _in_range(pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce"))
        present = _mask(text.notna())
    return _Parsed(values, present, present & _mask(values.isna()))


def _parse_dates(raw: pd.Series) -> _Parsed:
    """Dates as midnight UTC of the calendar date written (a time part, if any, is dropped)."""
    if _is_datetime(raw.dtype):
        wall = raw.dt.tz_localize(None) if raw.dt.tz is not None else raw
        values = _in_range(wall.dt.normalize().dt.tz_localize("UTC"))
        present = _mask(raw.notna())
    elif _object_kind(raw) in ("datetime", "datetime64", "date"):
        values = _in_range(pd.to_datetime(raw, utc=True, errors="coerce").dt.normalize())
        present = _mask(raw.notna())
    else:
        text = _as_text(raw)
        full = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
        day = pd.to_datetime(text.str.slice(0, 10), format="%Y-%m-%d", utc=True, errors="coerce")
        values = _in_range(day.where(full.notna()))
        present = _mask(text.notna())
    return _Parsed(values, present, present & _mask(values.isna()))


def _parse_numbers(raw: pd.Series) -> _Parsed:
    if _is_numeric(raw.dtype):
        v = raw.to_numpy(dtype="float64", na_value=np.nan)
        present = ~np.isnan(v)
    else:
        text = _as_text(raw)
        v = pd.to_numeric(text, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        present = _mask(text.notna())
    invalid = present & ~np.isfinite(v)
    v = np.where(invalid, np.nan, v)
    return _Parsed(pd.Series(v, dtype="float64"), present, invalid)


def _custom(raw: pd.Series, kind: Kind | None, problems: _Problems) -> pd.Series:
    """A custom field: numeric when every non-empty value is a finite number, else a category."""
    if kind is Kind.CATEGORY:
        return normalize_category(_as_text(raw))
    parsed = _parse_numbers(raw)
    if kind is Kind.NUMBER:
        problems.add(parsed.invalid, raw.name, REASON_BAD_NUMBER, raw)
        return parsed.values
    if not parsed.invalid.any():
        return parsed.values
    return normalize_category(_as_text(raw))


def _empty(kind: Kind, n: int) -> pd.Series:
    if kind in (Kind.TIMESTAMP, Kind.DATE):
        return pd.Series(pd.NaT, index=range(n), dtype=_UTC_NS)
    if kind is Kind.NUMBER:
        return pd.Series(np.nan, index=range(n), dtype="float64")
    return pd.Series(np.nan, index=range(n), dtype="str")


# --------------------------------------------------------------------------------------------
# row-level rules
# --------------------------------------------------------------------------------------------


@dataclass
class _Problems:
    """Collects BadRows from boolean masks; Python only loops over rows already known bad."""

    table: str
    offset: int
    rows: list[BadRow] = field(default_factory=list)

    def add(self, mask, column: str, reason: str, shown: pd.Series | None = None) -> None:
        positions = np.flatnonzero(_mask(mask))
        if not len(positions):
            return
        if shown is None:
            values = [None] * len(positions)
        else:
            values = [None if _isna(v) else str(v) for v in shown.to_numpy(dtype=object)[positions]]
        self.rows.extend(
            BadRow(self.table, int(p) + self.offset, column, reason, v) for p, v in zip(positions, values, strict=True)
        )


def _isna(value) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _mask(values) -> np.ndarray:
    if isinstance(values, pd.Series):
        return values.to_numpy(dtype=bool, na_value=False)
    return np.asarray(values, dtype=bool)


def _check_column(problems: _Problems, col: Column, raw: pd.Series, parsed: _Parsed, stages) -> None:
    values = parsed.values
    if col.required:
        problems.add(~parsed.present, col.name, REASON_MISSING)
    if col.kind is Kind.TIMESTAMP:
        problems.add(parsed.invalid, col.name, REASON_BAD_TIMESTAMP, raw)
    elif col.kind is Kind.DATE:
        problems.add(parsed.invalid, col.name, REASON_BAD_DATE, raw)
    elif col.kind is Kind.NUMBER:
        problems.add(parsed.invalid, col.name, REASON_BAD_NUMBER, raw)
        if col.min_value is not None:
            problems.add(values < col.min_value, col.name, f"below the minimum {col.min_value:g}", raw)
    elif col.kind is Kind.OUTCOME:
        problems.add(values.notna() & ~values.isin(OUTCOMES), col.name, REASON_UNKNOWN_OUTCOME, raw)
    if stages is not None:
        allowed = (*stages, *TERMINAL_STAGES)
        problems.add(values.notna() & ~values.isin(allowed), col.name, REASON_UNKNOWN_STAGE, raw)
    if col.unique:
        problems.add(values.notna() & values.duplicated(keep="first"), col.name, REASON_DUPLICATE, values)


def _check_rows(problems: _Problems, spec: TableSpec, frame: pd.DataFrame, typed, present, stages) -> None:
    """Rules across columns of one row."""

    def shown(name: str) -> pd.Series | None:
        return frame[name].reset_index(drop=True) if name in frame.columns else None

    if spec.name == "opportunities":
        outcome, stage = typed["outcome"], typed["stage"]
        closed = outcome.isin(TERMINAL_STAGES)
        problems.add(closed & ~present["closed_at"], "closed_at", REASON_CLOSED_WITHOUT_CLOSED_AT, outcome)
        problems.add(
            (outcome == "open") & present["closed_at"], "closed_at", REASON_OPEN_WITH_CLOSED_AT, shown("closed_at")
        )
        stage_known = stage.isin((*stages, *TERMINAL_STAGES))
        stage_class = stage.where(stage.isin(TERMINAL_STAGES), "open")
        mismatch = stage_known & outcome.isin(OUTCOMES) & (stage_class != outcome)
        problems.add(mismatch, "stage", REASON_STAGE_OUTCOME, stage + " (outcome " + outcome + ")")
    if spec.name in ("opportunities", "leads"):
        later = ("closed_at",) if spec.name == "opportunities" else ("converted_at", "disqualified_at")
        for name in later:
            problems.add(typed[name] < typed["created_at"], name, f"{name} before created_at", shown(name))
    if spec.name == "activities":
        linked = np.zeros(len(frame), dtype=bool)
        for name in ACTIVITY_LINKS:
            linked |= present[name]
        problems.add(~linked, NO_LINK_COLUMN, REASON_NO_LINK)


# --------------------------------------------------------------------------------------------
# foreign keys, export time
# --------------------------------------------------------------------------------------------


def _foreign_key_problems(
    frames: dict[str, pd.DataFrame], keep: dict[str, np.ndarray], *, cascade: bool
) -> list[BadRow]:
    """Foreign keys pointing at no row; with ``cascade``, also at rows being skipped (to a fixpoint).

    ``keep`` is updated in place: rows found bad here are no longer kept.
    """
    out: list[BadRow] = []
    links = [(t, c, rt, rc) for (t, c), (rt, rc) in FOREIGN_KEYS.items() if t in frames and rt in frames]
    for t, c, rt, rc in links:
        values = frames[t][c]
        nowhere = _mask(values.notna() & ~values.isin(frames[rt][rc].dropna()))
        _add_rows(out, t, nowhere, c, REASON_FK_NOWHERE, values)
        if cascade:
            keep[t] &= ~nowhere
    changed = cascade
    while changed:
        changed = False
        for t, c, rt, rc in links:
            values = frames[t][c]
            alive = frames[rt][rc][keep[rt]]
            dangling = keep[t] & _mask(values.notna() & ~values.isin(alive))
            if dangling.any():
                _add_rows(out, t, dangling, c, REASON_FK_SKIPPED, values)
                keep[t] &= ~dangling
                changed = True
    return out


def _add_rows(out: list[BadRow], table: str, mask: np.ndarray, column: str, reason: str, values: pd.Series) -> None:
    problems = _Problems(table, 1)
    problems.add(mask, column, reason, values)
    out += problems.rows


def _latest_timestamp(frames: dict[str, pd.DataFrame]) -> pd.Timestamp | None:
    latest = [
        frame[col.name].max()
        for name, frame in frames.items()
        for col in TABLES[name].columns
        if col.kind is Kind.TIMESTAMP and len(frame)
    ]
    latest = [t for t in latest if not pd.isna(t)]
    return max(latest).floor("s") if latest else None


def _utc(ts) -> pd.Timestamp:
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _normalize_stages(open_stages: Sequence[str]) -> tuple[str, ...]:
    if isinstance(open_stages, str):
        raise TypeError("open_stages is a sequence of stage names, not one string")
    return _normalized_stage_names(tuple(open_stages))


@functools.lru_cache(maxsize=64)
def _normalized_stage_names(open_stages: tuple[str, ...]) -> tuple[str, ...]:
    # cached: the configured stages are the same on every call, and the API types each
    # request's records through here (about 6 ms a call before the cache)
    normalized = normalize_category(pd.Series(list(open_stages), dtype="str")).dropna()
    return tuple(dict.fromkeys(s for s in normalized if s not in TERMINAL_STAGES))


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _csv_frame(table: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as CSV text: ISO 8601 timestamps with Z, dates YYYY-MM-DD, integral floats bare."""
    spec = TABLES[table]
    out = {}
    for name in frame.columns:
        values = frame[name]
        kind = spec.column(name).kind if name in spec.column_names else None
        if _is_datetime(values.dtype):
            out[name] = _to_utc(values).dt.strftime("%Y-%m-%d") if kind is Kind.DATE else _iso_text(values)
        elif pd.api.types.is_float_dtype(values.dtype):
            out[name] = _float_text(values)
        else:
            out[name] = values
    return pd.DataFrame(out, index=frame.index)


def _write_sql(frames: dict[str, pd.DataFrame], url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for name, frame in frames.items():
                frame.to_sql(name, conn, if_exists="replace", index=False)
    finally:
        engine.dispose()

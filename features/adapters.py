"""Mapping-driven import of a foreign CRM export (Salesforce, HubSpot, a spreadsheet) into the data contract.

An adapter is configuration, not code: a YAML *mapping* names, for every contract table, the
source file(s) it comes from and, per contract column, how to compute it from the source
columns (rename, value map, timestamp format and time zone, constant, lookup in another file,
condition, or an explicitly synthetic timestamp). :func:`import_export` applies a mapping to a
folder of files and returns the same typed, validated :class:`~features.contract.Export` that
:func:`features.io.load_export` returns, so everything downstream (training, the leakage audit,
scoring) runs unchanged. Built-in mappings live in ``features/mappings/*.yaml``; each documents
its own format (see ``salesforce.yaml`` for the full list of rule keys).

Problems are reported like any bad row (:class:`~features.errors.BadRow`), pointing into the
*source* export a CRM admin has in hand: ``Lead.csv row 17, column CreatedDate: not a timestamp
in format %d/%m/%Y (leads.created_at) (value '31/02/2024')``. A source column the mapping needs
but the file lacks is reported at row 0 (the header); a required contract column the mapping
does not map at all likewise. Header problems always fail the import; row problems fail it
unless ``skip_bad_rows``, in which case exactly those rows are dropped and counted.

Where a source has no timestamps, a mapping must say so: ``synthetic: record_order`` builds
them from the record order, evenly spaced, and the import lists every synthetic column in
:attr:`ImportResult.synthetic` (and in ``IMPORT.json`` beside the written export). Nothing
invents precision silently. A value derived from real data by an assumption (``from: created_at,
offset: 45d, assumed: "why"``) is listed the same way, with the stated reason.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from features.contract import DEFAULT_OPEN_STAGES, FOREIGN_KEYS, TABLES, Export, Kind
from features.errors import BadRow, ExportSourceError, ExportValidationError, FunnelcastError, ValidationReport
from features.io import REASON_FK_NOWHERE, REASON_FK_SKIPPED, coerce_table, load_export, write_export

__all__ = [
    "FIELD_HISTORY",
    "MAPPINGS_DIR",
    "ImportResult",
    "Mapping",
    "MappingError",
    "builtin_mappings",
    "import_export",
    "load_mapping",
    "read_field_history",
    "read_import_info",
    "write_import",
]

#: Folder of the built-in mappings (package data).
MAPPINGS_DIR = Path(__file__).parent / "mappings"

#: An optional extra table an adapter may produce beside the contract's: when each field of a
#: record was set or changed (Salesforce LeadHistory / OpportunityFieldHistory, HubSpot property
#: history). Not part of the contract; the leakage audit reads it when present.
FIELD_HISTORY = "field_history"
_FIELD_HISTORY_COLUMNS = {"record_table": Kind.CATEGORY, "record_id": Kind.ID, "field": Kind.CATEGORY,
                          "changed_at": Kind.TIMESTAMP}

REASON_NO_SOURCE_COLUMN = "column missing from the export"
REASON_NOT_MAPPED = "required column not mapped"
REASON_UNMAPPED_VALUE = "value not in the mapping's value map"

_RULE_KEYS = {"column", "value", "from", "offset", "format", "timezone", "values", "other", "when", "pattern",
              "lookup", "synthetic", "split", "coalesce", "assumed"}
_SOURCE_KEYS = {"file", "columns", "custom", "custom_rest", "ignore", "where", "optional"}


class MappingError(FunnelcastError):
    """The mapping file itself is wrong (unknown key, unknown table, bad format): names where."""

    def __init__(self, where: str, reason: str):
        self.where, self.reason = where, reason
        super().__init__(f"mapping {where}: {reason}")


# --------------------------------------------------------------------------------------------
# the mapping
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """``{column: X, in: [...]}`` on a source column, or ``{field: x, ...}`` on a contract column
    computed earlier in the same source; also ``not_in``, ``present: true|false``."""

    name: str
    on_field: bool
    values_in: tuple[str, ...] | None = None
    values_not_in: tuple[str, ...] | None = None
    present: bool | None = None


@dataclass(frozen=True)
class Rule:
    """How one contract column is computed from a source row (see the module docstring)."""

    column: str | None = None
    value: str | None = None
    from_field: str | None = None
    offset: pd.Timedelta | None = None
    format: str | None = None
    timezone: str = "UTC"
    values: dict[str, str] | None = None
    other: str = "keep"
    when: Condition | None = None
    pattern: str | None = None
    lookup: dict[str, str] | None = None
    synthetic: dict[str, Any] | None = None
    split: str | None = None
    coalesce: tuple[Rule, ...] = ()
    assumed: str | None = None  # why a derived value is an assumption, not data: listed as SYNTHETIC

    def source_columns(self) -> list[str]:
        cols = [self.column] if self.column else []
        if self.when is not None and not self.when.on_field:
            cols.append(self.when.name)
        if self.synthetic and self.synthetic.get("order_by"):
            cols.append(self.synthetic["order_by"])
        for r in self.coalesce:
            cols += r.source_columns()
        return cols


@dataclass(frozen=True)
class Source:
    """One source file feeding one contract table."""

    file: str
    columns: dict[str, Rule]
    custom: dict[str, Rule] = field(default_factory=dict)
    custom_rest: bool = False
    ignore: tuple[str, ...] = ()
    where: Condition | None = None
    optional: bool = False


@dataclass(frozen=True)
class Mapping:
    name: str
    description: str
    tables: dict[str, tuple[Source, ...]]
    missing_values: tuple[str, ...] = ("",)
    notes: tuple[str, ...] = ()
    path: str = ""


def builtin_mappings() -> dict[str, Path]:
    """The mappings shipped with funnelcast, by name (``salesforce``, ``hubspot``, ``xeducation``, ...)."""
    return {p.stem: p for p in sorted(MAPPINGS_DIR.glob("*.yaml"))}


def load_mapping(name_or_path: str | Path) -> Mapping:
    """A mapping from a YAML file, or a built-in one by name; every key is checked."""
    path = Path(name_or_path)
    builtin = builtin_mappings()
    if not path.exists() and str(name_or_path) in builtin:
        path = builtin[str(name_or_path)]
    if not path.exists():
        raise MappingError(str(name_or_path), f"no such file, and not a built-in mapping ({', '.join(builtin)})")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise MappingError(str(path), f"not valid YAML ({exc})") from exc
    return parse_mapping(doc, where=str(path))


def parse_mapping(doc: Any, where: str = "<mapping>") -> Mapping:
    if not isinstance(doc, dict) or "tables" not in doc:
        raise MappingError(where, "expected a mapping with a 'tables' key")
    unknown = set(doc) - {"name", "description", "tables", "missing_values", "notes"}
    if unknown:
        raise MappingError(where, f"unknown key(s) {sorted(unknown)}")
    tables: dict[str, tuple[Source, ...]] = {}
    for table, spec in (doc["tables"] or {}).items():
        if table not in TABLES and table != FIELD_HISTORY:
            raise MappingError(where, f"unknown table {table!r}; tables are {', '.join([*TABLES, FIELD_HISTORY])}")
        specs = spec.get("sources") if isinstance(spec, dict) and "sources" in spec else [spec]
        if not isinstance(specs, list) or not specs:
            raise MappingError(where, f"{table}: expected a source or 'sources: [...]'")
        tables[table] = tuple(_parse_source(s, f"{where}: {table}", table) for s in specs)
    missing = doc.get("missing_values", [""])
    return Mapping(
        name=str(doc.get("name", Path(where).stem)),
        description=str(doc.get("description", "")).strip(),
        tables=tables,
        missing_values=tuple(str(v) for v in missing) if missing else ("",),
        notes=tuple(str(n).strip() for n in doc.get("notes", []) or []),
        path=where,
    )


def _parse_source(spec: Any, where: str, table: str) -> Source:
    if not isinstance(spec, dict) or "file" not in spec:
        raise MappingError(where, "each source needs a 'file'")
    unknown = set(spec) - _SOURCE_KEYS
    if unknown:
        raise MappingError(where, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_SOURCE_KEYS)}")
    known = _table_columns(table)
    columns = {}
    for name, rule in (spec.get("columns") or {}).items():
        if name not in known:
            raise MappingError(where, f"{name!r} is not a column of {table} ({', '.join(known)}); "
                               "put source columns you want as features under 'custom'")
        columns[name] = _parse_rule(rule, f"{where}.{name}")
    custom = {str(k): _parse_rule(v, f"{where}.custom.{k}") for k, v in (spec.get("custom") or {}).items()}
    clash = [k for k in custom if k in known]
    if clash:
        raise MappingError(where, f"custom field name(s) {clash} clash with contract columns")
    where_cond = _parse_condition(spec["where"], f"{where}.where") if "where" in spec else None
    return Source(str(spec["file"]), columns, custom, bool(spec.get("custom_rest", False)),
                  tuple(str(c) for c in spec.get("ignore") or ()), where_cond, bool(spec.get("optional", False)))


def _parse_rule(rule: Any, where: str) -> Rule:
    if isinstance(rule, str):
        return Rule(column=rule)
    if not isinstance(rule, dict):
        raise MappingError(where, f"expected a source column name or a rule, got {rule!r}")
    unknown = set(rule) - _RULE_KEYS
    if unknown:
        raise MappingError(where, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_RULE_KEYS)}")
    sources = [k for k in ("column", "value", "from", "synthetic", "coalesce") if k in rule]
    if len(sources) != 1:
        raise MappingError(where, "give exactly one of column, value, from, synthetic, coalesce")
    values = rule.get("values")
    if values is not None:
        if not isinstance(values, dict):
            raise MappingError(where, "'values' must map source values to contract values")
        values = {_fold(k): (None if v is None else str(v)) for k, v in values.items()}
    synthetic = rule.get("synthetic")
    if synthetic is not None:
        if not isinstance(synthetic, dict) or synthetic.get("kind", "record_order") != "record_order":
            raise MappingError(where, "synthetic: {kind: record_order, start: ..., every: ..., order_by: COL}")
        for key in ("start", "every"):
            if key not in synthetic:
                raise MappingError(where, f"synthetic timestamps need '{key}' (state the spacing you assume)")
        synthetic = {**synthetic, "start": _utc(synthetic["start"], where), "every": _delta(synthetic["every"], where)}
    lookup = rule.get("lookup")
    if lookup is not None and not (isinstance(lookup, dict) and {"file", "key", "value"} <= set(lookup)):
        raise MappingError(where, "lookup: {file: F, key: COLUMN_IN_F, value: COLUMN_IN_F}")
    if rule.get("pattern") is not None:
        try:
            re.compile(rule["pattern"])
        except re.error as exc:
            raise MappingError(where, f"bad pattern ({exc})") from exc
    fmt = rule.get("format")
    return Rule(
        column=rule.get("column"),
        value=None if rule.get("value") is None else str(rule["value"]),
        from_field=rule.get("from"),
        offset=_delta(rule["offset"], where) if "offset" in rule else None,
        format=None if fmt is None else str(fmt),
        timezone=str(rule.get("timezone", "UTC")),
        values=values,
        other=str(rule.get("other", "keep")),
        when=_parse_condition(rule["when"], f"{where}.when") if "when" in rule else None,
        pattern=rule.get("pattern"),
        lookup=lookup,
        synthetic=synthetic,
        split=rule.get("split"),
        coalesce=tuple(_parse_rule(r, f"{where}.coalesce[{i}]") for i, r in enumerate(rule.get("coalesce") or ())),
        assumed=None if rule.get("assumed") is None else str(rule["assumed"]),
    )


def _parse_condition(cond: Any, where: str) -> Condition:
    if not isinstance(cond, dict) or (("column" in cond) == ("field" in cond)):
        raise MappingError(where, "a condition is {column: SOURCE_COLUMN | field: contract_column, in|not_in|present}")
    unknown = set(cond) - {"column", "field", "in", "not_in", "present"}
    if unknown:
        raise MappingError(where, f"unknown key(s) {sorted(unknown)}")

    def folded(key):
        return tuple(_fold(v) for v in cond[key]) if key in cond else None

    return Condition(
        name=str(cond.get("column", cond.get("field"))),
        on_field="field" in cond,
        values_in=folded("in"),
        values_not_in=folded("not_in"),
        present=cond.get("present"),
    )


def _table_columns(table: str) -> list[str]:
    return list(_FIELD_HISTORY_COLUMNS) if table == FIELD_HISTORY else TABLES[table].column_names


def _kind(table: str, column: str) -> Kind:
    if table == FIELD_HISTORY:
        return _FIELD_HISTORY_COLUMNS[column]
    return TABLES[table].column(column).kind


def _required(table: str, column: str) -> bool:
    return True if table == FIELD_HISTORY else TABLES[table].column(column).required


def _fold(value: Any) -> str:
    return str(value).strip().casefold()


def _utc(value: Any, where: str) -> pd.Timestamp:
    try:
        t = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise MappingError(where, f"not a timestamp: {value!r}") from exc
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _delta(value: Any, where: str) -> pd.Timedelta:
    try:
        return pd.Timedelta(re.sub(r"(?<=\d)\s*d\b", "D", str(value)))
    except ValueError as exc:
        raise MappingError(where, f"not a duration (e.g. 14d, 2h): {value!r}") from exc


def snake_case(name: str) -> str:
    """A source column name as a custom field name: ``"Lead Quality"`` -> ``lead_quality``."""
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(name).strip())
    s = re.sub(r"[^0-9a-zA-Z]+", "_", s).strip("_").casefold()
    return s or "field"


# --------------------------------------------------------------------------------------------
# applying a mapping
# --------------------------------------------------------------------------------------------


@dataclass
class ImportResult:
    """An imported export, what was wrong with the source, and what the import assumed."""

    export: Export
    report: ValidationReport
    notes: list[str]
    synthetic: list[str]
    mapping: str
    field_history: pd.DataFrame | None = None

    def info(self) -> dict[str, Any]:
        return {
            "mapping": self.mapping,
            "synthetic_timestamps": self.synthetic,
            "notes": self.notes,
            "rows": {name: len(frame) for name, frame in self._frames().items()},
            "skipped_rows_per_reason": {f"{t}: {r}": n for (t, r), n in self.report.counts_by_reason().items()},
        }

    def _frames(self) -> dict[str, pd.DataFrame]:
        frames = {name: self.export.table(name) for name in TABLES if self.export.table(name) is not None}
        if self.field_history is not None:
            frames[FIELD_HISTORY] = self.field_history
        return frames


@dataclass
class _Built:
    """One contract table built from its sources, with the provenance of every row."""

    frame: pd.DataFrame
    files: np.ndarray  # source file of each row
    rows: np.ndarray  # 1-based data row in that file
    source_columns: dict[tuple[str, str], str]  # (file, contract column) -> source column
    bad: list[tuple[int, str, BadRow]]  # (position, contract column, source-level BadRow)


class _Reader:
    """Reads source files once, as text; missing markers (e.g. "Select") become missing."""

    def __init__(self, folder: Path, missing: Sequence[str]):
        self.folder, self.missing = folder, {str(m) for m in missing}
        self._cache: dict[str, pd.DataFrame] = {}

    def exists(self, name: str) -> bool:
        return (self.folder / name).exists()

    def read(self, name: str) -> pd.DataFrame:
        if name not in self._cache:
            path = self.folder / name
            if not path.exists():
                raise ExportSourceError(str(self.folder), f"{name} not found")
            try:
                frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
            except pd.errors.EmptyDataError:
                frame = pd.DataFrame()
            except (pd.errors.ParserError, UnicodeDecodeError) as exc:
                raise ExportSourceError(str(path), f"not a readable UTF-8 CSV file ({exc})") from exc
            frame = frame.rename(columns=lambda c: str(c).strip())
            stripped = frame.apply(lambda s: s.str.strip()) if len(frame.columns) else frame
            self._cache[name] = stripped.where(~stripped.isin(self.missing))
        return self._cache[name]


def import_export(
    mapping: Mapping | str | Path,
    source: str | Path,
    *,
    open_stages: Sequence[str] = DEFAULT_OPEN_STAGES,
    skip_bad_rows: bool = False,
) -> ImportResult:
    """Apply ``mapping`` to the folder ``source`` and return a typed, validated export.

    Raises :class:`ExportValidationError` listing every bad row (in terms of the source files)
    unless ``skip_bad_rows``; header problems (a source column or a required mapping missing)
    are fatal either way.
    """
    if not isinstance(mapping, Mapping):
        mapping = load_mapping(mapping)
    folder = Path(source)
    if not folder.is_dir():
        raise ExportSourceError(str(folder), "no such folder")
    reader = _Reader(folder, mapping.missing_values)
    notes = list(mapping.notes)
    synthetic: list[str] = []

    built: dict[str, _Built] = {}
    for table in [*TABLES, FIELD_HISTORY]:
        sources = mapping.tables.get(table)
        if not sources:
            if table in TABLES and TABLES[table].required_table:
                notes.append(f"{table}: not in this source; written empty")
            continue
        b = _build_table(table, sources, reader, notes, synthetic)
        if b is not None:
            built[table] = b

    header = [bad for b in built.values() for _, _, bad in b.bad if bad.row == 0]
    if header:  # a source column or a required mapping is missing: every row would be bad
        raise ExportValidationError(ValidationReport(bad_rows=header))
    typed: dict[str, pd.DataFrame] = {}
    problems: list[tuple[str, int, BadRow]] = []  # (table, position, translated BadRow)
    for table, b in built.items():
        seen = {(pos, col) for pos, col, bad in b.bad if bad.row > 0}
        problems += [(table, pos, bad) for pos, _, bad in b.bad if bad.row > 0]
        if table == FIELD_HISTORY:
            frame, rows = _coerce_history(b.frame)
        else:
            frame, rows = coerce_table(table, b.frame, open_stages=open_stages, row_offset=0)
        typed[table] = frame
        for bad in rows:
            col = bad.column.split("/")[0]
            if (bad.row, col) in seen:
                continue
            problems.append((table, bad.row, _translate(b, table, bad.row, bad)))
    if problems and not skip_bad_rows:
        raise ExportValidationError(ValidationReport(bad_rows=[p[2] for p in problems]))

    for table in TABLES:  # tables the mapping does not produce are empty
        if table not in typed and TABLES[table].required_table:
            typed[table] = coerce_table(table, pd.DataFrame({c: pd.Series([], dtype="str") for c in
                                                             TABLES[table].column_names}))[0]
    keep = {t: np.ones(len(f), dtype=bool) for t, f in typed.items()}
    for table, pos, _ in problems:
        keep[table][pos] = False
    positions = {t: np.flatnonzero(k) for t, k in keep.items()}
    kept = {t: f[keep[t]].reset_index(drop=True) for t, f in typed.items()}
    history = kept.pop(FIELD_HISTORY, None)

    dropped = {t: set(typed[t].loc[~keep[t], TABLES[t].key].dropna()) for t in typed
               if t in TABLES and TABLES[t].key}
    export, fk = _validate_keys(kept, open_stages, skip_bad_rows, built, positions, dropped)
    report = ValidationReport(bad_rows=[p[2] for p in problems] + fk, skipped=skip_bad_rows)
    report.row_counts = {name: len(export.table(name)) for name in TABLES if export.table(name) is not None}
    return ImportResult(export, report, notes, synthetic, mapping.name, history)


def _validate_keys(frames, open_stages, skip, built, positions, dropped) -> tuple[Export, list[BadRow]]:
    """Foreign keys and the final typing, by the loader itself: write, then ``load_export``."""
    tmp = Path(tempfile.mkdtemp(prefix="funnelcast-import-"))
    try:
        export = Export(**{t: frames.get(t) for t in TABLES}, open_stages=tuple(open_stages))
        write_export(export, tmp)
        try:
            loaded, report = load_export(tmp, open_stages=open_stages, skip_bad_rows=skip)
        except ExportValidationError as exc:
            raise ExportValidationError(ValidationReport(
                bad_rows=[_translate_output(b, built, positions, dropped) for b in exc.report.bad_rows])) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return loaded, [_translate_output(b, built, positions, dropped) for b in report.bad_rows]


def _translate_output(bad: BadRow, built: dict[str, _Built], positions: dict[str, np.ndarray],
                      dropped: dict[str, set[str]]) -> BadRow:
    b = built.get(bad.table)
    if b is None:
        return bad
    pos = int(positions[bad.table][bad.row - 1])
    target = FOREIGN_KEYS.get((bad.table, bad.column))
    if bad.reason == REASON_FK_NOWHERE and target and bad.value in dropped.get(target[0], set()):
        bad = BadRow(bad.table, bad.row, bad.column, REASON_FK_SKIPPED, bad.value)
    return _translate(b, bad.table, pos, bad)


def _translate(b: _Built, table: str, pos: int, bad: BadRow) -> BadRow:
    """A BadRow about contract row ``pos`` of ``table``, pointed at the source file's row and column."""
    file = str(b.files[pos])
    col = bad.column.split("/")[0]
    src = b.source_columns.get((file, col))
    column = src if src else bad.column
    return BadRow(file, int(b.rows[pos]), column, f"{bad.reason} ({table}.{bad.column})", bad.value)


def _coerce_history(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[BadRow]]:
    out, bad = {}, []
    for name, kind in _FIELD_HISTORY_COLUMNS.items():
        values = frame[name]
        if kind is Kind.TIMESTAMP:
            out[name] = pd.to_datetime(values, utc=True, errors="coerce").astype("datetime64[ns, UTC]")
        elif kind is Kind.CATEGORY:
            out[name] = values.astype("str").str.strip().str.casefold().where(values.notna())
        else:
            out[name] = values.astype("str").where(values.notna())
        for pos in np.flatnonzero(out[name].isna().to_numpy()):
            bad.append(BadRow(FIELD_HISTORY, int(pos), name, "missing required value"))
    return pd.DataFrame(out), bad


def _build_table(table: str, sources: Sequence[Source], reader: _Reader, notes: list[str],
                 synthetic: list[str]) -> _Built | None:
    parts, files, rows, bad = [], [], [], []
    source_columns: dict[tuple[str, str], str] = {}
    offset = 0
    for src in sources:
        if not reader.exists(src.file):
            if src.optional:
                notes.append(f"{table}: optional source {src.file} not found; skipped")
                continue
            raise ExportSourceError(str(reader.folder), f"{src.file} not found (the mapping reads {table} from it)")
        frame, src_rows, cols, problems = _apply_source(table, src, reader, notes, synthetic)
        parts.append(frame)
        files.append(np.full(len(frame), src.file, dtype=object))
        rows.append(src_rows)
        source_columns.update({(src.file, c): s for c, s in cols.items()})
        bad += [(offset + pos, col, b) for pos, col, b in problems]
        offset += len(frame)
    if not parts:
        return None
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return _Built(frame, np.concatenate(files), np.concatenate(rows), source_columns, bad)


def _apply_source(table: str, src: Source, reader: _Reader, notes: list[str], synthetic: list[str]):
    raw = reader.read(src.file)
    n_all = len(raw)
    problems: list[tuple[int, str, BadRow]] = []
    where_ = f"{table} <- {src.file}"

    # header: every source column a rule names must exist
    absent: set[str] = set()
    for name, rule in src.columns.items():
        needed = rule.source_columns()
        if rule.coalesce and any(c in raw.columns for c in needed):
            needed = []  # a coalesce needs one of its columns
        for col in needed:
            if col not in raw.columns and col not in absent:
                absent.add(col)
                if _required(table, name):
                    problems.append((0, name, BadRow(src.file, 0, col, f"{REASON_NO_SOURCE_COLUMN} ({table}.{name})")))
                else:
                    notes.append(f"{where_}: column {col!r} not in the file; {table}.{name} left empty")
    for name in _table_columns(table):
        if _required(table, name) and name not in src.columns:
            problems.append((0, name, BadRow(src.file, 0, name, f"{REASON_NOT_MAPPED} ({table}.{name})")))
    if any(p[2].row == 0 for p in problems):
        return pd.DataFrame(index=range(0)), np.zeros(0, dtype=int), {}, problems

    src_rows = np.arange(1, n_all + 1)
    if src.where is not None and not src.where.on_field and src.where.name not in raw.columns:
        notes.append(f"{where_}: column {src.where.name!r} of the mapping's 'where' not in the file; all rows kept")
    elif src.where is not None:
        mask = _condition(src.where, raw, {}, where_)
        if (~mask).any():
            notes.append(f"{where_}: {int((~mask).sum())} of {n_all} rows not selected by the mapping's 'where'")
        raw, src_rows = raw[mask].reset_index(drop=True), src_rows[mask]

    out: dict[str, pd.Series] = {}
    synthetic_fields: set[str] = set()
    source_cols: dict[str, str] = {}
    for name, rule in src.columns.items():
        kind = _kind(table, name)
        values, invalid, reason = _evaluate(rule, raw, out, kind, reader, where_)
        if rule.lookup is not None:
            source_cols[name] = f"{rule.lookup['value']} (in {rule.lookup['file']}, by {rule.column})"
        elif rule.column:
            source_cols[name] = rule.column
        if rule.synthetic is not None or rule.assumed or (rule.from_field in synthetic_fields):
            synthetic_fields.add(name)
            _note_synthetic(notes, synthetic, table, name, rule, src.file)
        for pos in np.flatnonzero(invalid):
            shown = raw[rule.column].iat[pos] if rule.column in raw.columns else None
            problems.append((int(pos), name, BadRow(src.file, int(src_rows[pos]), rule.column or name,
                                                    f"{reason} ({table}.{name})", shown)))
        out[name] = values

    frame = pd.DataFrame({c: out[c] for c in out}, index=range(len(raw)))
    used = {c for r in (*src.columns.values(), *src.custom.values()) for c in r.source_columns()} | set(src.ignore)
    for name, rule in src.custom.items():
        if any(c not in raw.columns for c in rule.source_columns()):
            notes.append(f"{where_}: custom field {name!r} needs a column not in the file; skipped")
            continue
        values, _, _ = _evaluate(rule, raw, out, Kind.CATEGORY, reader, where_)
        frame[name] = values.to_numpy()
    if src.custom_rest:
        taken = set(_table_columns(table)) | set(frame.columns)
        for col in raw.columns:
            if col in used:
                continue
            name = snake_case(col)
            if name in taken:
                name = f"x_{name}"
            frame[name] = raw[col].to_numpy()
            taken.add(name)
    return frame, src_rows, source_cols, problems


def _note_synthetic(notes: list[str], synthetic: list[str], table: str, name: str, rule: Rule, file: str) -> None:
    key = f"{table}.{name}"
    if key in synthetic:
        return
    synthetic.append(key)
    if rule.synthetic is not None:
        s = rule.synthetic
        order = f"by {s['order_by']!r} ascending" if s.get("order_by") else "file order"
        notes.append(f"{key} is SYNTHETIC: {file} has no timestamps; record order ({order}), one record every "
                     f"{s['every']} from {s['start']}. Time-based splits on this data are record-order splits.")
    elif rule.assumed:
        base = f"{rule.from_field} + {rule.offset}" if rule.from_field else (rule.column or rule.value)
        notes.append(f"{key} is SYNTHETIC: {base} ({file}): {rule.assumed}")
    else:
        notes.append(f"{key} is SYNTHETIC: {rule.from_field} + {rule.offset} (derived from a synthetic timestamp)")


def _condition(cond: Condition, raw: pd.DataFrame, out: dict[str, pd.Series], where: str) -> np.ndarray:
    if cond.on_field:
        if cond.name not in out:
            raise MappingError(where, f"condition on {cond.name!r}, which is not computed before it")
        values = out[cond.name]
    else:
        values = raw[cond.name]
    folded = values.astype("str").str.strip().str.casefold().where(values.notna())
    mask = np.ones(len(values), dtype=bool)
    if cond.values_in is not None:
        mask &= folded.isin(cond.values_in).to_numpy(dtype=bool)
    if cond.values_not_in is not None:
        mask &= ~folded.isin(cond.values_not_in).to_numpy(dtype=bool)
    if cond.present is not None:
        mask &= folded.notna().to_numpy(dtype=bool) == bool(cond.present)
    return mask


def _evaluate(rule: Rule, raw: pd.DataFrame, out: dict[str, pd.Series], kind: Kind, reader: _Reader,
              where: str) -> tuple[pd.Series, np.ndarray, str]:
    """(values, invalid mask, reason for the invalid ones) of one rule over a source frame."""
    n = len(raw)
    invalid = np.zeros(n, dtype=bool)
    reason = ""
    is_time = kind in (Kind.TIMESTAMP, Kind.DATE)
    if rule.coalesce:
        values = None
        for sub in rule.coalesce:
            v, bad, r = _evaluate(sub, raw, out, kind, reader, where)
            invalid |= bad
            reason = reason or r
            values = v if values is None else values.where(values.notna(), v)
        return values, invalid, reason
    if rule.synthetic is not None:
        s = rule.synthetic
        if s.get("order_by"):
            key = pd.to_numeric(raw[s["order_by"]], errors="coerce")
            order = key.rank(method="first").fillna(0).to_numpy() - 1
            invalid = key.isna().to_numpy()
            reason = f"order column {s['order_by']!r} is not a number"
        else:
            order = np.arange(n, dtype=float)
        values = pd.Series(s["start"] + order * s["every"], dtype="datetime64[ns, UTC]").where(~invalid)
    elif rule.from_field is not None:
        if rule.from_field not in out:
            raise MappingError(where, f"'from: {rule.from_field}' is not computed before it")
        values = out[rule.from_field]
    elif rule.value is not None:
        values = pd.Series(rule.value, index=range(n), dtype="str")
    else:
        values = raw[rule.column].reset_index(drop=True) if rule.column in raw.columns else \
            pd.Series(np.nan, index=range(n), dtype="str")
        if rule.split:
            values = values.str.split(rule.split).str[0].str.strip()
        if rule.pattern:
            values = values.where(values.str.match(rule.pattern).fillna(False).astype(bool))
        if rule.values is not None:
            folded = values.str.strip().str.casefold()
            listed = folded.isin(list(rule.values))
            mapped = folded.map(rule.values)
            if rule.other == "keep":
                fallback = values
            elif rule.other in ("missing", "error"):
                fallback = pd.Series(np.nan, index=values.index, dtype="str")
                if rule.other == "error":
                    invalid |= (values.notna() & ~listed).to_numpy(dtype=bool)
                    reason = REASON_UNMAPPED_VALUE
            else:  # a constant for every other (present) value
                fallback = pd.Series(rule.other, index=values.index, dtype="str").where(values.notna())
            values = mapped.where(listed, fallback).astype("str")
        if rule.lookup is not None:
            table = reader.read(rule.lookup["file"])
            for col in (rule.lookup["key"], rule.lookup["value"]):
                if col not in table.columns:
                    raise MappingError(where, f"lookup column {col!r} not in {rule.lookup['file']}")
            index = table.drop_duplicates(rule.lookup["key"]).set_index(rule.lookup["key"])[rule.lookup["value"]]
            values = values.map(index)
        if is_time:
            values, bad, reason = _parse_time(values, rule)
            invalid |= bad
    if rule.offset is not None:
        values = values + rule.offset
    if rule.when is not None:
        values = values.where(_condition(rule.when, raw, out, where))
        invalid &= _condition(rule.when, raw, out, where)
    return values.reset_index(drop=True), invalid, reason


def _parse_time(text: pd.Series, rule: Rule) -> tuple[pd.Series, np.ndarray, str]:
    present = text.notna().to_numpy(dtype=bool)
    fmt = rule.format
    if fmt in ("epoch_ms", "epoch_s"):
        num = pd.to_numeric(text, errors="coerce")
        values = pd.to_datetime(num, unit="ms" if fmt == "epoch_ms" else "s", utc=True, errors="coerce")
        reason = f"not a Unix time in {'milliseconds' if fmt == 'epoch_ms' else 'seconds'}"
    else:
        parsed = pd.to_datetime(text, format=fmt or "ISO8601", errors="coerce", utc=False) if fmt else None
        if parsed is None:
            values = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
            reason = "not an ISO 8601 timestamp"
            if rule.timezone != "UTC":  # naive ISO values are in the mapping's time zone
                naive = ~text.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True).fillna(False).astype(bool)
                local = pd.to_datetime(text.where(naive), format="ISO8601", errors="coerce")
                local = local.dt.tz_localize(rule.timezone, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
                values = values.where(~naive, local)
        else:
            if getattr(parsed.dt, "tz", None) is None:
                parsed = parsed.dt.tz_localize(rule.timezone, ambiguous="NaT", nonexistent="NaT")
            values = parsed.dt.tz_convert("UTC")
            reason = f"not a timestamp in format {fmt}"
    values = values.astype("datetime64[ns, UTC]")
    return values, present & values.isna().to_numpy(dtype=bool), reason


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------

IMPORT_INFO = "IMPORT.json"


def write_import(result: ImportResult, out: str | Path, *, fmt: str = "csv") -> Path:
    """Write the export (``features.io.write_export``), ``field_history.csv`` if any, and ``IMPORT.json``
    (mapping, synthetic timestamps, notes, rows, skipped rows) into the folder ``out``."""
    folder = Path(out)
    write_export(result.export, folder, fmt=fmt)  # type: ignore[arg-type]
    if result.field_history is not None:
        h = result.field_history.copy()
        h["changed_at"] = h["changed_at"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        h.to_csv(folder / f"{FIELD_HISTORY}.csv", index=False)
    (folder / IMPORT_INFO).write_text(json.dumps(result.info(), indent=2, default=str) + "\n")
    return folder


def read_import_info(source: str | Path) -> dict[str, Any]:
    """``IMPORT.json`` of an imported export folder ({} when absent, e.g. a native export or a SQL URL)."""
    if isinstance(source, str) and "://" in source:
        return {}
    path = Path(source) / IMPORT_INFO
    return json.loads(path.read_text()) if path.exists() else {}


def read_field_history(source: str | Path) -> pd.DataFrame | None:
    """``field_history.csv`` beside an export folder, typed, or None."""
    if isinstance(source, str) and "://" in source:
        return None
    path = Path(source) / f"{FIELD_HISTORY}.csv"
    if not path.exists():
        return None
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame = frame.where(frame != "")
    return _coerce_history(frame)[0].dropna()

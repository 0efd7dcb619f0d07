"""Domain errors raised inside ``features`` and ``models``.

They name the bad value (table, row, column, reason). Only ``serving`` maps them to HTTP
status codes, in one exception handler.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class FunnelcastError(Exception):
    """Base class of every domain error."""


@dataclass(frozen=True)
class BadRow:
    """One broken rule in one row of one table.

    ``row`` is the 1-based data row number in the source (the header is not counted),
    so a CRM admin can find it in the file they exported.
    """

    table: str
    row: int
    column: str
    reason: str
    value: str | None = None

    def __str__(self) -> str:
        shown = f" (value {self.value!r})" if self.value is not None else ""
        return f"{self.table} row {self.row}, column {self.column}: {self.reason}{shown}"


@dataclass
class ValidationReport:
    """Every bad row found while loading an export, and what was done about it."""

    bad_rows: list[BadRow] = field(default_factory=list)
    skipped: bool = False
    row_counts: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:  # a report is "truthy" when it found problems
        return bool(self.bad_rows)

    def counts_by_reason(self) -> dict[tuple[str, str], int]:
        """Number of distinct bad rows per (table, reason)."""
        seen = {(b.table, b.row, b.reason) for b in self.bad_rows}
        return dict(Counter((t, r) for t, _, r in seen))

    def summary(self, limit: int = 50) -> str:
        lines = [str(b) for b in self.bad_rows[:limit]]
        if len(self.bad_rows) > limit:
            lines.append(f"... and {len(self.bad_rows) - limit} more")
        counts = self.counts_by_reason()
        if counts:
            verb = "skipped" if self.skipped else "bad"
            lines.append(f"rows {verb} per reason:")
            lines += [f"  {t}: {r}: {n}" for (t, r), n in sorted(counts.items())]
        return "\n".join(lines)


class ExportValidationError(FunnelcastError):
    """The export breaks the data contract; ``report`` lists every bad row."""

    def __init__(self, report: ValidationReport):
        self.report = report
        n = len({(b.table, b.row) for b in report.bad_rows})
        super().__init__(
            f"the CRM export has {n} invalid row(s); fix them or load with --skip-bad-rows:\n"
            + report.summary()
        )


class MissingTable(FunnelcastError):
    def __init__(self, table: str, where: str):
        self.table = table
        super().__init__(f"required table {table!r} not found in {where}")


class MissingColumn(FunnelcastError):
    def __init__(self, table: str, column: str):
        self.table, self.column = table, column
        super().__init__(f"table {table!r} lacks the required column {column!r}")


class InvalidRecord(FunnelcastError):
    """A record sent for scoring breaks a rule (e.g. an activity after ``as_of``)."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


class ModelNotAvailable(FunnelcastError):
    """A task's model is not loaded; ``transient``: it may be soon (the server starting, a store it could not
    read), so a client should retry; not when no version holds the alias (that takes a train or a promote)."""

    def __init__(self, name: str, reason: str, transient: bool = True):
        self.name, self.reason, self.transient = name, reason, transient
        super().__init__(f"model {name!r} is not available: {reason}")


class ExportSourceError(FunnelcastError):
    """The export source itself cannot be read: no such folder, a table present twice, a corrupt file."""

    def __init__(self, where: str, reason: str):
        self.where, self.reason = where, reason
        super().__init__(f"cannot read the CRM export {where}: {reason}")


class NothingToLearnFrom(FunnelcastError, ValueError):
    """The export holds no record a task learns from at the cutoff (no lead or deal open at any snapshot time,
    no customer with a complete value): what the task needs and what the export has."""

    def __init__(self, task_needs: str, found: str):
        self.task_needs, self.found = task_needs, found
        super().__init__(f"{task_needs}; the export has {found}")

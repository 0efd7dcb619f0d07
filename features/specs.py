"""What the lead and the deal feature specs share: their options and how ``from_export``
reads the custom fields and activity kinds of an export."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self

import pandas as pd

from features.columns import activity_kind
from features.contract import Export, custom_columns
from features.pit import rows_before


def custom_split(table: str, frame: pd.DataFrame, exclude: Sequence[str]) -> tuple[list[str], list[str]]:
    """The custom fields of ``table`` not in ``exclude``: the categorical ones and the numeric ones."""
    custom = [c for c in custom_columns(table, frame) if c not in exclude]
    numeric = [c for c in custom if pd.api.types.is_numeric_dtype(frame[c])]
    return [c for c in custom if c not in numeric], numeric


def kept(columns: Iterable[str], exclude: Sequence[str]) -> tuple[str, ...]:
    return tuple(c for c in columns if c not in exclude)


@dataclass(frozen=True)
class FeatureSpec:
    """Which columns a feature frame has: fixed when a model is trained, reused to score."""

    #: The activities' column naming the entity they belong to (``lead_id``, ``opportunity_id``).
    ACTIVITY_OWNER: ClassVar[str]
    #: The spec's column fields by prefix (``lead`` for ``lead_categoricals`` and
    #: ``lead_numerics``): the export's table and its contract fields used as categoricals and
    #: as numerics; the table's custom fields join them.
    SOURCE_TABLES: ClassVar[dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]]

    activity_types: tuple[str, ...]
    windows: tuple[int, ...] = field(default=(7, 30, 90), kw_only=True)
    horizon_days: int = field(default=91, kw_only=True)
    excluded: tuple[str, ...] = field(default=(), kw_only=True)

    @classmethod
    def from_export(
        cls,
        export: Export,
        *,
        horizon_days: int = 91,
        windows: Sequence[int] = (7, 30, 90),
        exclude: Iterable[str] = (),
        min_activity_share: float = 0.005,
        as_of: pd.Timestamp | None = None,
    ) -> Self:
        """Spec for an export: its custom fields and the activity kinds that occur on the
        entity (before ``as_of`` when given, so even the column set is point-in-time)."""
        exclude = tuple(exclude)
        acts = export.activities[export.activities[cls.ACTIVITY_OWNER].notna()]
        if as_of is not None:
            acts = rows_before(acts, "occurred_at", as_of)
        shares = activity_kind(acts).value_counts(normalize=True)
        types = tuple(sorted(shares[shares >= min_activity_share].index.astype(str)))
        return cls(
            activity_types=types,
            windows=tuple(windows),
            horizon_days=horizon_days,
            excluded=exclude,
            **cls.columns_of(export, exclude),
        )

    @classmethod
    def columns_of(cls, export: Export, exclude: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """The spec's column fields for ``export`` (see :attr:`SOURCE_TABLES`)."""
        fields: dict[str, tuple[str, ...]] = {}
        for prefix, (table, categoricals, numerics) in cls.SOURCE_TABLES.items():
            custom_cat, custom_num = custom_split(table, getattr(export, table), exclude)
            fields[f"{prefix}_categoricals"] = kept((*categoricals, *custom_cat), exclude)
            fields[f"{prefix}_numerics"] = kept((*numerics, *custom_num), exclude)
        return fields

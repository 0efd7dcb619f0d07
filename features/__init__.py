"""Reading and validating a CRM export, point-in-time features and labels, the sample CRM."""

from features.adapters import ImportResult, Mapping, MappingError, builtin_mappings, import_export, load_mapping
from features.contract import DEFAULT_OPEN_STAGES, TABLES, Export
from features.deals import DealContext, DealFeatureSpec, deal_context, deal_features, deal_snapshots, deal_state, open_opportunities
from features.io import coerce_table, load_export, write_export
from features.leads import (
    LeadContext,
    LeadFeatureSpec,
    converted_within_horizon,
    lead_context,
    lead_features,
    lead_snapshots,
    snapshot_times,
)
from features.pit import known_as_of, open_leads, rows_before, utc
from features.settings import Settings, get_settings

__all__ = [
    "DEFAULT_OPEN_STAGES",
    "TABLES",
    "DealContext",
    "DealFeatureSpec",
    "Export",
    "ImportResult",
    "LeadContext",
    "LeadFeatureSpec",
    "Mapping",
    "MappingError",
    "Settings",
    "builtin_mappings",
    "coerce_table",
    "converted_within_horizon",
    "deal_context",
    "deal_features",
    "deal_snapshots",
    "deal_state",
    "get_settings",
    "import_export",
    "known_as_of",
    "lead_context",
    "lead_features",
    "lead_snapshots",
    "load_export",
    "load_mapping",
    "open_leads",
    "open_opportunities",
    "rows_before",
    "snapshot_times",
    "utc",
    "write_export",
]

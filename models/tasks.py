"""The prediction tasks. Each value is also the registered model's name in MLflow."""

from enum import StrEnum


class Task(StrEnum):
    LEAD_QUALITY = "lead_quality"
    STAGE_CONVERSION = "stage_conversion"
    HIGH_VALUE = "high_value"

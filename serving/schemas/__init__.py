"""Request and response schemas of the API, named for their role and grouped per task:
``common`` (the contract's records, model reference, reason, error), ``leads``, ``deals``,
``accounts``, ``ops`` (health, models, reload, outcomes, performance) and ``live`` (snapshot,
refresh, the score feed and history)."""

from serving.schemas.accounts import AccountScoreRequest, AccountScoreResponse
from serving.schemas.common import ErrorResponse, ModelRef, Reason, error_responses
from serving.schemas.deals import DealScoreRequest, DealScoreResponse
from serving.schemas.leads import LeadScoreRequest, LeadScoreResponse

__all__ = [
    "AccountScoreRequest",
    "AccountScoreResponse",
    "DealScoreRequest",
    "DealScoreResponse",
    "ErrorResponse",
    "LeadScoreRequest",
    "LeadScoreResponse",
    "ModelRef",
    "Reason",
    "error_responses",
]

"""Property-based fuzzing of the whole API from its OpenAPI schema (Schemathesis), small budget:
no 5xx for anything generated, and every response matches its documented schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    ignored_auth,
    negative_data_rejection,
    positive_data_acceptance,
)

from features.settings import Settings
from models.registry import LoadedModel
from serving.app import create_app

KEY = "fuzz-key"


@pytest.fixture(scope="module")
def api_schema(lead_scorer, account_sample, sample_export, sample_dir, tmp_path_factory):
    """Every served model loaded and the sample as the configured export, so every operation
    runs its real code (accounts, deals, funnel, forecast, worklist), not its 503."""
    from training.deals import DealTrainConfig, build_deal_model

    deal = build_deal_model(sample_export, DealTrainConfig(snapshot_every_days=28, seed=7), sample_export.exported_at)
    home = tmp_path_factory.mktemp("fuzz")
    models = {"lead_quality": LoadedModel("lead_quality", "1", "champion", None, lead_scorer),
              "high_value": LoadedModel("high_value", "1", "champion", None, account_sample[3].scorer),
              "stage_conversion": LoadedModel("stage_conversion", "1", "champion", None, deal.scorer)}
    settings = Settings(home=home, api_keys=[KEY], tracking_uri=f"sqlite:///{home / 'e.db'}", rate_limit_per_minute=0,
                        data=str(sample_dir / "export"))
    app = create_app(settings, preloaded=models)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


def test_api_never_errors_and_matches_its_schema(api_schema):
    """Every operation, 25 generated cases each (schemathesis' pytest plugin predates pytest 9,
    so the strategies are driven with Hypothesis directly)."""
    operations = _operations(api_schema)
    assert any(op.path == "/v1/leads/score" for op in operations)
    for op in operations:

        @settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def check(case):
            # generated timestamps may fall before the training cutoff or after as_of: those are 422s
            # by design, so the "positive data must be accepted" check does not apply
            response = case.call(headers={"X-API-Key": KEY})
            # every model is loaded and nothing runs concurrently: no 5xx at all
            assert response.status_code < 500, response.text
            case.validate_response(
                response,
                headers={"X-API-Key": KEY},
                excluded_checks=[positive_data_acceptance, negative_data_rejection, ignored_auth, not_a_server_error],
            )

        check()

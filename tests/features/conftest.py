"""Helpers shared by the point-in-time tests of the lead and the deal features."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import pytest

from features.contract import Export


def _assert_future_is_invisible(features: Callable[[Export], pd.DataFrame], export: Export, rewritten: Export) -> pd.DataFrame:
    """``features`` of ``export`` equal those of ``rewritten`` (the same past, another future); returns them."""
    before = features(export)
    assert len(before) > 20
    pd.testing.assert_frame_equal(before, features(rewritten))
    return before


@pytest.fixture
def assert_future_is_invisible() -> Callable[[Callable[[Export], pd.DataFrame], Export, Export], pd.DataFrame]:
    return _assert_future_is_invisible

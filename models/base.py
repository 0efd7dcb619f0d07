"""The scorer base every task's scorer derives from: the cutoff guard, features, predict, explain.

A scorer is the one object MLflow logs (``models.registry.ScorerModel``) and serving loads.
What is shared lives here; each task's scorer (``models.scorer.LeadScorer``,
``models.deals.DealScorer``, ``models.accounts.AccountScorer``) adds how its features are
computed and what its output holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import pandas as pd

from features.errors import InvalidRecord
from models.estimators import CalibratedBoostedClassifier, calibrated_contributions
from models.explain import Contributions, log_odds_contributions

__all__ = ["ClassifierScorer", "Scorer"]


class Scorer(ABC):
    """Base of the task scorers (dataclasses with ``spec``, ``task`` and ``metadata`` fields)."""

    task: str
    metadata: dict[str, object]
    #: The training cutoff (a field or a property of each scorer): the model has seen what happened before it.
    trained_until: pd.Timestamp

    @property
    def feature_names(self) -> list[str]:
        """The columns of the feature frame the models read, in order."""
        return list(self.spec.feature_names)  # type: ignore[attr-defined]

    @property
    @abstractmethod
    def explained(self) -> CalibratedBoostedClassifier:
        """The boosted model whose TreeSHAP values explain the score."""

    @abstractmethod
    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """The task's probability for each row of a feature frame (what the MLflow pyfunc serves)."""

    def predict(self, X: pd.DataFrame) -> pd.DataFrame:
        """The task's predictions for a feature frame, one column per output."""
        return pd.DataFrame({"probability": self.predict_proba(X)}, index=X.index)

    def explain(self, X: pd.DataFrame) -> Contributions:
        """Per-feature contributions to the score of each row, in calibrated log-odds."""
        m = self.explained
        # the model reads its columns by name: no X[feature_names_] copy (a tenth of a lead's scoring time)
        return log_odds_contributions(calibrated_contributions(m, m.contributions(X), X), m.feature_names_)

    def check_as_of(self, as_of: pd.Timestamp, records: pd.DataFrame | None = None, id_column: str = "",
                    entity: str = "") -> None:
        """Refuse an ``as_of`` before the training cutoff (the score would leak) and ``records``
        created at or after ``as_of`` (raises InvalidRecord naming the first)."""
        if as_of < self.trained_until:
            raise InvalidRecord(
                "as_of",
                f"{as_of.isoformat()} is before the model's training cutoff {self.trained_until.isoformat()}: "
                "the model has seen what happened after it, so the score would leak. "
                "Score as of a later time, or train with --as-of on earlier history.",
            )
        if records is None:
            return
        late = records["created_at"] >= as_of
        if late.any():
            first = records.loc[late, id_column].iloc[0]
            raise InvalidRecord(f"{entity} {first}", f"created_at is not before as_of {as_of.isoformat()}")


class ClassifierScorer(Scorer):
    """A scorer whose probability is one calibrated ``classifier`` (lead quality, high value)."""

    classifier: CalibratedBoostedClassifier

    @property
    def explained(self) -> CalibratedBoostedClassifier:
        return self.classifier

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.classifier.predict_proba(X)

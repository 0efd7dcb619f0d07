"""Model code: tasks, estimators, baselines, the scorer MLflow logs and serving loads, SHAP."""

from models.baselines import NaiveBayesLeadScore
from models.estimators import CalibratedBoostedClassifier
from models.explain import Contributions, log_odds_contributions, reason_sentence, to_probability
from models.metrics import calibration_table, classification_metrics
from models.scorer import LeadScorer
from models.tasks import Task

__all__ = [
    "CalibratedBoostedClassifier",
    "Contributions",
    "LeadScorer",
    "NaiveBayesLeadScore",
    "Task",
    "calibration_table",
    "classification_metrics",
    "log_odds_contributions",
    "reason_sentence",
    "to_probability",
]

"""Model code: tasks, estimators, baselines, the scorer MLflow logs and serving loads, SHAP."""

from models.baselines import NaiveBayesLeadScore
from models.deals import DealScorer, score_open_deals
from models.estimators import CalibratedBoostedClassifier
from models.explain import Contributions, log_odds_contributions, reason_sentence, to_probability
from models.forecast import forecast_bookings, simulate_bookings
from models.funnel import funnel_report
from models.metrics import calibration_table, classification_metrics
from models.scorer import LeadScorer
from models.tasks import Task

__all__ = [
    "CalibratedBoostedClassifier",
    "Contributions",
    "DealScorer",
    "LeadScorer",
    "NaiveBayesLeadScore",
    "Task",
    "calibration_table",
    "classification_metrics",
    "forecast_bookings",
    "funnel_report",
    "log_odds_contributions",
    "reason_sentence",
    "score_open_deals",
    "simulate_bookings",
    "to_probability",
]

"""Model code: tasks, estimators, baselines, the scorer MLflow logs and serving loads, SHAP."""

from models.base import Scorer
from models.baselines import NaiveBayesLeadScore
from models.deals import DealScorer, score_open_deals
from models.estimators import CalibratedBoostedClassifier
from models.explain import Contributions, log_odds_contributions, reason_sentence, to_probability
from models.folds import InvalidFold, Split, TimeFold, parse_duration
from models.forecast import forecast_bookings, simulate_bookings
from models.funnel import funnel_report
from models.metrics import calibration_table, classification_metrics
from models.scorer import LeadScorer
from models.tasks import Scored, Task, TaskDefinition, TrainResult

__all__ = [
    "CalibratedBoostedClassifier",
    "Contributions",
    "DealScorer",
    "InvalidFold",
    "LeadScorer",
    "NaiveBayesLeadScore",
    "Scored",
    "Scorer",
    "Split",
    "Task",
    "TaskDefinition",
    "TimeFold",
    "TrainResult",
    "calibration_table",
    "classification_metrics",
    "forecast_bookings",
    "funnel_report",
    "log_odds_contributions",
    "parse_duration",
    "reason_sentence",
    "score_open_deals",
    "simulate_bookings",
    "to_probability",
]

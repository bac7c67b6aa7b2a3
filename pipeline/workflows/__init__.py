"""One library call per command: what ``tlearn <command>`` runs after parsing.

One module per stage; the public names are re-exported here, where the CLI finds them.
"""

from pipeline.workflows.auto import AutoResult, AutoSettings, run_auto
from pipeline.workflows.demo import DemoResult, run_demo
from pipeline.workflows.evaluate import compare_models, evaluate_model, write_report_pages
from pipeline.workflows.extract import ExtractReport, ExtractSettings, extract_dataset
from pipeline.workflows.predict import (
    PREDICTION_COLUMNS,
    PredictionReport,
    predict_files,
    top_cell,
    write_predictions,
)
from pipeline.workflows.train import TrainOutcome, repeated_splits, train_store

__all__ = [
    "PREDICTION_COLUMNS",
    "AutoResult",
    "AutoSettings",
    "DemoResult",
    "ExtractReport",
    "ExtractSettings",
    "PredictionReport",
    "TrainOutcome",
    "compare_models",
    "evaluate_model",
    "extract_dataset",
    "predict_files",
    "repeated_splits",
    "run_auto",
    "run_demo",
    "top_cell",
    "train_store",
    "write_predictions",
    "write_report_pages",
]

"""Addresses in the MLflow UI that open on what a person came for, importing no MLflow.

MLflow 3 remembers per browser whether it shows its GenAI or its model-training view and starts
on GenAI; the `workflowType` query parameter, read inside the `#/...` route, picks training.
"""

from __future__ import annotations

from urllib.parse import urlencode

TRAINING_VIEW = {"workflowType": "machine_learning"}
BY_VAL_LOSS = {"orderByKey": "metrics.`val/loss`", "orderByAsc": "true"}  # best first


def runs_table_url(ui: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI at `ui`: the training view, the runs ordered
    by the headline val loss."""
    query = urlencode({**TRAINING_VIEW, **BY_VAL_LOSS})
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def run_page_url(ui: str, experiment_id: str, run_id: str) -> str:
    """One run's page in the MLflow UI at `ui`, in the training view."""
    route = f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{route}?{urlencode(TRAINING_VIEW)}"

"""eval_stage: what a trained checkpoint is worth and how fast it is.

Each eval is a plain function taking `LoadedModel`s (`open_model`, or `preset_models` for
latency) and a pydantic config, returning an `EvalResult`; `publish` writes its JSON and plot and
logs them to MLflow. `python -m eval_stage <eval>` is a thin CLI over the same functions.
"""

from .bench import check_speedup, evaluate_bench_dual_primal
from .chat import Conversation, chat, generate_text
from .config import (
    BenchConfig,
    GenerateConfig,
    LatencyConfig,
    NiahConfig,
    PerplexityConfig,
    PositionLossConfig,
)
from .errors import EvalInputError, SpeedupBelowThreshold
from .latency import evaluate_latency
from .models import LoadedModel, default_out_dir, open_model, preset_models
from .niah import (
    build_cases,
    chance_level,
    evaluate_niah,
    greedy_answerer,
    likelihood_scorer,
    score_cases,
    score_ranked,
)
from .perplexity import evaluate_perplexity
from .plots import LossCurve, loss_curves_figure, plot_loss_curves, position_loss_curves
from .position_loss import evaluate_position_loss
from .publish import publish
from .results import EvalResult, read_result
from .tracking import TrackingConfig, log_result

__all__ = [
    "BenchConfig",
    "Conversation",
    "EvalInputError",
    "EvalResult",
    "GenerateConfig",
    "LatencyConfig",
    "LoadedModel",
    "LossCurve",
    "NiahConfig",
    "PerplexityConfig",
    "PositionLossConfig",
    "SpeedupBelowThreshold",
    "TrackingConfig",
    "build_cases",
    "chance_level",
    "chat",
    "check_speedup",
    "default_out_dir",
    "evaluate_bench_dual_primal",
    "evaluate_latency",
    "evaluate_niah",
    "evaluate_perplexity",
    "evaluate_position_loss",
    "generate_text",
    "greedy_answerer",
    "likelihood_scorer",
    "log_result",
    "loss_curves_figure",
    "open_model",
    "plot_loss_curves",
    "position_loss_curves",
    "preset_models",
    "publish",
    "read_result",
    "score_cases",
    "score_ranked",
]

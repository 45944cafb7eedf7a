"""eval_stage: what a trained checkpoint is worth and how fast it is.

Each eval is a plain function taking `LoadedModel`s (`open_model`, or `preset_models` for
latency) and a pydantic config, returning an `EvalResult`; `publish` writes its JSON and plot and
logs them to MLflow. `python -m eval_stage <eval>` is a thin CLI over the same functions;
`command(config, model=..., out=...)` renders one as that CLI's command, `parse_command` reads one.
"""

from .bench import check_speedup, evaluate_bench_dual_primal
from .chat import Conversation, chat, generate_text
from .cli import command, parse_command
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
from .niah import build_cases, evaluate_niah, greedy_answerer, score_cases
from .perplexity import evaluate_perplexity
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
    "NiahConfig",
    "PerplexityConfig",
    "PositionLossConfig",
    "SpeedupBelowThreshold",
    "TrackingConfig",
    "build_cases",
    "chat",
    "check_speedup",
    "command",
    "default_out_dir",
    "evaluate_bench_dual_primal",
    "evaluate_latency",
    "evaluate_niah",
    "evaluate_perplexity",
    "evaluate_position_loss",
    "generate_text",
    "greedy_answerer",
    "log_result",
    "open_model",
    "parse_command",
    "preset_models",
    "publish",
    "read_result",
    "score_cases",
]

"""eval_stage: what a trained checkpoint is worth and how fast it is.

Each eval is a plain function taking `LoadedModel`s (`open_model`, or `preset_models` for
latency) and a pydantic config, returning an `EvalResult`; `publish` writes its JSON and plot and
logs them to MLflow. `EVALS` lists every eval once (name, config, function); `EvalOutputs` says
which result files an out dir holds. `python -m eval_stage <eval>` is a thin CLI over them;
`command(config, model=..., out=...)` renders one as that CLI's command, `parse_command` reads
one. `compare_runs` / `write_comparison` put several runs' results side by side;
`evaluate_long_context` / `write_long_context` measure several models on the same sequences at
growing lengths, paired against the first.
"""

from .bench import check_speedup, evaluate_bench_dual_primal
from .chat import Conversation, chat, generate_text
from .cli import command, compare_command, long_context_command, parse_command
from .compare import compare_runs
from .compare import records as comparison_records
from .compare import summarize as summarize_comparison
from .config import (
    BenchConfig,
    GenerateConfig,
    LatencyConfig,
    LmEvalConfig,
    LongContextConfig,
    NiahConfig,
    PerplexityConfig,
    PositionLossConfig,
)
from .errors import EvalInputError, SpeedupBelowThreshold
from .evals import EVALS, STANDARD_EVALS, Eval, find_eval, run_eval
from .figures import LossCurve
from .latency import evaluate_latency
from .long_context import (
    LongContextResult,
    evaluate_long_context,
    read_long_context,
)
from .long_context import metrics as long_context_metrics
from .long_context import summarize as summarize_long_context
from .long_context_seeds import SeedSummary, combine_seeds, write_seed_summary
from .long_context_seeds import markdown as seed_summary_markdown
from .long_context_seeds import summarize as summarize_seeds
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
from .plots import loss_curves_figure, plot_loss_curves, position_loss_curves
from .position_loss import evaluate_position_loss
from .publish import publish, write_comparison, write_long_context
from .results import EvalOutputs, EvalResult, read_result, result_file
from .tracking import TrackingConfig, log_metrics_and_files, log_result


def log_export_model(export_dir, name: str = "model"):
    """`pyfunc.log_export_model`: the export as a pyfunc model in the active MLflow run (MLflow
    is imported on this call only, not with the package)."""
    from .pyfunc import log_export_model as log

    return log(export_dir, name)


__all__ = [
    "EVALS",
    "STANDARD_EVALS",
    "BenchConfig",
    "Conversation",
    "Eval",
    "EvalInputError",
    "EvalOutputs",
    "EvalResult",
    "GenerateConfig",
    "LatencyConfig",
    "LmEvalConfig",
    "LoadedModel",
    "LongContextConfig",
    "LongContextResult",
    "LossCurve",
    "NiahConfig",
    "PerplexityConfig",
    "PositionLossConfig",
    "SeedSummary",
    "SpeedupBelowThreshold",
    "TrackingConfig",
    "build_cases",
    "chance_level",
    "chat",
    "check_speedup",
    "combine_seeds",
    "command",
    "compare_command",
    "compare_runs",
    "comparison_records",
    "default_out_dir",
    "evaluate_bench_dual_primal",
    "evaluate_latency",
    "evaluate_long_context",
    "evaluate_niah",
    "evaluate_perplexity",
    "evaluate_position_loss",
    "find_eval",
    "generate_text",
    "greedy_answerer",
    "likelihood_scorer",
    "log_export_model",
    "log_metrics_and_files",
    "log_result",
    "long_context_command",
    "long_context_metrics",
    "loss_curves_figure",
    "open_model",
    "parse_command",
    "plot_loss_curves",
    "position_loss_curves",
    "preset_models",
    "publish",
    "read_long_context",
    "read_result",
    "result_file",
    "run_eval",
    "score_cases",
    "score_ranked",
    "seed_summary_markdown",
    "summarize_comparison",
    "summarize_long_context",
    "summarize_seeds",
    "write_comparison",
    "write_long_context",
    "write_seed_summary",
]

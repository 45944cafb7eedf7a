"""Exceptions raised by eval_stage; each message names what is wrong and what to do."""


class EvalInputError(ValueError):
    """Bad input to an eval (missing model, data that does not fit the model, an impossible
    option). Raised before any work; the CLI prints it on one line and exits 2."""


class SpeedupBelowThreshold(RuntimeError):
    """`bench-dual-primal --assert-speedup X`: the measured forward dual/primal speedup is below
    X. The results are still written; the CLI exits 1."""

"""What every config shares: `ConfigModel`, the base of every pydantic config (frozen, unknown
keys refused, no `inf`/`nan` in any float), and `error_summary`, a `ValidationError` as one
line `field.path: message`, the form every CLI refusal and every flow error uses. Imports no
torch."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigModel(BaseModel):
    """Base of every config (model, data, train, eval, flows). Frozen, an unknown key is an
    error, and every float, nested or in a container, must be finite: `inf`/`nan` from a flag
    (`--lr inf`), YAML (`lr: .inf`) or Python is refused at validation, naming the field,
    before any work. Subclasses inherit this; their own `model_config` adds to it."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def error_summary(error: ValidationError, keys: Sequence[str] = (), at: str = "") -> str:
    """The first problem as `field.path: message` on one line (`(+N more)` when there are
    more); a validator's `ValueError` gives its own message, without pydantic's "Value error, ".

    `at`: the dotted path of the validated config inside a larger one (`niah` -> `niah.trials`).
    `keys`: the dotted keys the user gave; a nested config reports only its own path (`bogus`
    for `train.bogus`), so when exactly one key ends with that path, the key is named instead.
    """
    first = error.errors()[0]
    where = ".".join([at, *map(str, first["loc"])] if at else map(str, first["loc"]))
    named = [k for k in keys if k == where or k.endswith(f".{where}")]
    where = named[0] if where and len(named) == 1 else where
    cause = first.get("ctx", {}).get("error") if first["type"] == "value_error" else None
    message = " ".join(str(cause if cause is not None else first["msg"]).split())
    more = error.error_count() - 1
    line = f"{where}: {message}" if where else message
    return f"{line} (+{more} more)" if more else line

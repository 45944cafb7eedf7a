"""Chat messages to prompt text, with the template an export carries or a documented default.

An export may hold `chat_template.json`: `{"template": "<jinja2>", "stop": ["..."]}`. The
template is rendered in jinja2's sandbox with `messages` (a list of `{"role", "content"}`),
`add_generation_prompt` (true: end where the assistant's reply begins) and `continuation`
(true when a session already holds earlier turns, which must not be rendered again); `stop`
are stop strings every chat request gets besides its own.

The default, for a base model that has never seen a chat format, writes each message as
`Role: content` on its own line and ends with `Assistant:`; it stops at `\\nUser:`, where a
base model would start writing the user's next turn. A continuation starts on a new line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ServeInputError

TEMPLATE_FILE = "chat_template.json"

DEFAULT_TEMPLATE = (
    "{% if continuation %}\n{% endif %}"
    "{% for message in messages %}"
    "{{ message.role | capitalize }}: {{ message.content }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
DEFAULT_STOP = ("\nUser:",)


@dataclass(frozen=True)
class ChatTemplate:
    source: str
    stop: tuple[str, ...]
    origin: str  # the file it came from, or "default"

    def __post_init__(self) -> None:
        try:
            compiled = _environment().from_string(self.source)
        except TemplateError as e:
            raise ServeInputError(f"{self.origin}: chat template does not compile: {e}") from e
        object.__setattr__(self, "_compiled", compiled)

    def render(self, messages: list[dict[str, str]], *, continuation: bool) -> str:
        return self._compiled.render(
            messages=messages, add_generation_prompt=True, continuation=continuation
        )


def _environment() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(keep_trailing_newline=True)


def load_chat_template(export_dir: Path) -> ChatTemplate:
    """The export's `chat_template.json`, else the default; a malformed file is refused."""
    path = Path(export_dir) / TEMPLATE_FILE
    if not path.is_file():
        return ChatTemplate(DEFAULT_TEMPLATE, DEFAULT_STOP, "default")
    try:
        spec = json.loads(path.read_text())
        template, stop = spec["template"], tuple(spec.get("stop", ()))
        if not isinstance(template, str) or not all(isinstance(s, str) and s for s in stop):
            raise TypeError("template must be a string and stop a list of non-empty strings")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ServeInputError(f"{path}: not a chat template file ({e})") from e
    return ChatTemplate(template, stop, str(path))

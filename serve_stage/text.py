"""One choice's ids to text, piece by piece, cut before the first stop string.

A piece is held back while the text ends with what may still become a stop string, or with a
byte-fallback character whose last byte has not arrived ("\\ufffd"), so a streamed reply never
shows text that the finished reply does not have.
"""

from __future__ import annotations

from data_stage import Tokenizer


class TextAssembler:
    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...]):
        self._tokenizer, self._stop = tokenizer, stop
        self._ids: list[int] = []
        self.text = ""  # everything decoded so far (cut at the stop string once one is found)
        self._shown = 0  # characters of `text` already handed out

    def add(self, token_id: int) -> tuple[str, bool]:
        """Take one generated id: (the text that is now safe to show, whether a stop string
        ended the choice)."""
        self._ids.append(token_id)
        full = self._tokenizer.decode(self._ids)
        cut = self._first_stop(full)
        if cut is not None:
            self.text = full[:cut]
            return self._take(len(self.text)), True
        self.text = full
        return self._take(len(full) - self._held_back(full)), False

    def rest(self) -> str:
        """What is left to show when the choice ends without a stop string."""
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        piece = self.text[self._shown : upto] if upto > self._shown else ""
        self._shown = max(self._shown, upto)
        return piece

    def _first_stop(self, full: str) -> int | None:
        # a stop string can only end in the text not yet shown
        found = [
            i for s in self._stop if (i := full.find(s, max(0, self._shown - len(s) + 1))) >= 0
        ]
        return min(found) if found else None

    def _held_back(self, full: str) -> int:
        """Characters at the end of `full` that may still turn into a stop string or a
        complete character."""
        if full.endswith("\ufffd"):
            return len(full) - len(full.rstrip("\ufffd"))
        longest = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(full)), longest, -1):
                if full.endswith(s[:k]):
                    longest = k
                    break
        return longest

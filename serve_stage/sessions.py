"""Sessions: one conversation's model state, kept between requests, on disk and hot in memory.

Layout under `<state-dir>/sessions/`, per session id `S`:
- `S.<sha12>.safetensors`: the state (`ttt_core.Cache.save`, one row), named by its digest;
- `S.json`: `{"id", "state_file", "sha256", "tokens_seen", "state_bytes", "layers", "model"}`
  (`model`: the digest of the export that made it; another export's server refuses the
  session, 409), the commit point. A write puts the new state file beside the old one, then replaces `S.json` atomically,
  then removes the old file: a server killed at any instant restarts with the state before or
  after the request, never a torn one. At start, state files no `S.json` names are removed;
  a state file whose bytes are not its recorded sha256 is refused on load.

In memory, an LRU of the `hot` most recently used states; the others are read back from disk
when asked for (every state is on disk after every request, so evicting is free). Thread safe.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ttt_core import Cache
from ttt_core.files import atomic_write_text, fsync_and_replace, sha256_file, temp_path

from .errors import ServeError, ServeInputError

SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SESSIONS_DIR = "sessions"


@dataclass(frozen=True)
class SessionInfo:
    """What `GET /v1/sessions/{id}` shows: tokens the state has consumed and its size."""

    id: str
    tokens_seen: int
    state_bytes: int  # bytes of the state's tensors as saved (KV: the used slots)
    layers: tuple[str, ...]  # the state class of each layer (FastWeightState, KVState, ...)
    in_memory: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"object": "session", **asdict(self), "layers": list(self.layers)}


def state_bytes(cache: Cache) -> int:
    """Bytes of a cache's tensors as `Cache.save` writes them."""
    tensors = [t for layer in cache.layers for t in layer.tensors().values()]
    return sum(t.numel() * t.element_size() for t in [*tensors, cache.offsets])


def check_session_id(session_id: str) -> str:
    if not SESSION_ID.match(session_id):
        raise ServeError(
            400,
            f"session_id {session_id!r}: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit",
            param="session_id",
        )
    return session_id


class SessionStore:
    """Session states under `directory` (module docstring). `new_state()` makes an empty one-row
    cache of the served model; `model_config` (its dumped ModelConfig) is what a saved state must
    have been made by; states load onto `device`."""

    def __init__(
        self,
        directory: Path,
        *,
        hot: int,
        new_state: Callable[[], Cache],
        model_config: dict[str, Any],
        device: str,
        model_digest: str = "",
    ) -> None:
        self.directory = Path(directory) / SESSIONS_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self._hot_limit, self._new_state = hot, new_state
        self._model_config, self._device, self._model = model_config, device, model_digest
        self._lock = threading.Lock()
        self._hot: OrderedDict[str, Cache] = OrderedDict()
        self._index: dict[str, dict[str, Any]] = {}
        self._reserved: set[str] = set()  # ids being created (no state written yet)
        self._recover()

    def _recover(self) -> None:
        """Read every `S.json`; remove temps and state files no record names."""
        for path in self.directory.iterdir():
            if path.name.startswith("."):
                path.unlink()  # a temp of a write that never finished
        for record_file in self.directory.glob("*.json"):
            try:
                record = json.loads(record_file.read_text())
                self._index[record["id"]] = record
            except (ValueError, KeyError, TypeError) as e:
                raise ServeInputError(f"{record_file}: not a session record ({e}); move it "
                                      "away to start without that session") from e  # fmt: skip
        named = {record["state_file"] for record in self._index.values()}
        for state_file in self.directory.glob("*.safetensors"):
            if state_file.name not in named:
                state_file.unlink()

    # ---- queries ------------------------------------------------------------------------

    def __contains__(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._index

    def info(self, session_id: str) -> SessionInfo:
        with self._lock:
            record = self._record(session_id)
            return SessionInfo(
                id=session_id,
                tokens_seen=record["tokens_seen"],
                state_bytes=record["state_bytes"],
                layers=tuple(record["layers"]),
                in_memory=session_id in self._hot,
            )

    def totals(self) -> dict[str, int]:
        """Sessions on disk, sessions in memory, and the bytes of the ones in memory."""
        with self._lock:
            hot_bytes = sum(self._index[s]["state_bytes"] for s in self._hot)
            return {"sessions": len(self._index), "in_memory": len(self._hot),
                    "in_memory_bytes": hot_bytes}  # fmt: skip

    def state(self, session_id: str) -> Cache:
        """The session's state (the store's own copy: callers must not change it in place)."""
        with self._lock:
            record = self._record(session_id)
            cache = self._hot.get(session_id)
            if cache is not None:
                self._hot.move_to_end(session_id)
                return cache
        if record.get("model", "") != self._model:
            raise ServeError(409, f"session {session_id!r} was made by another model (export "
                             f"digest {record.get('model')!r}, serving {self._model!r}); delete it "
                             "or serve that model", param="session_id",
                             code="session_model_mismatch")  # fmt: skip
        path = self.directory / record["state_file"]
        if sha256_file(path) != record["sha256"]:
            raise ServeError(500, f"{path}: session state damaged (sha256 differs from its record)")
        cache = Cache.load(path, self._model_config, device=self._device)
        with self._lock:
            self._remember(session_id, cache)
        return cache

    def _record(self, session_id: str) -> dict[str, Any]:
        record = self._index.get(session_id)
        if record is None:
            raise ServeError(404, f"no session {session_id!r}", param="session_id",
                             code="session_not_found")  # fmt: skip
        return record

    # ---- changes ------------------------------------------------------------------------

    def create(self, session_id: str | None = None) -> SessionInfo:
        """A new empty session (an id is made when none is given); an existing id is a 409."""
        session_id = check_session_id(session_id or f"sess-{uuid.uuid4().hex[:20]}")
        with self._lock:
            if session_id in self._index or session_id in self._reserved:
                raise ServeError(409, f"session {session_id!r} exists", param="session_id",
                                 code="session_exists")  # fmt: skip
            self._reserved.add(session_id)  # unknown to requests until its first state is in
        try:
            self.put(session_id, self._new_state())
        finally:
            with self._lock:
                self._reserved.discard(session_id)
        return self.info(session_id)

    def put(self, session_id: str, cache: Cache) -> None:
        """Commit `cache` (one row) as the session's state: on disk first, then in memory."""
        if cache.batch_size != 1:
            raise ValueError(f"a session holds one row, got {cache.batch_size}")
        with self._lock:
            old = self._index.get(session_id, {}).get("state_file")
        tmp = temp_path(self.directory / f"{session_id}.safetensors")
        try:
            cache.save(tmp)
            digest = sha256_file(tmp)
            state_file = f"{session_id}.{digest[:12]}.safetensors"
            fsync_and_replace(tmp, self.directory / state_file)
        finally:
            tmp.unlink(missing_ok=True)
        record = {
            "id": session_id,
            "state_file": state_file,
            "sha256": digest,
            "tokens_seen": int(cache.offsets[0]),
            "state_bytes": state_bytes(cache),
            "layers": [type(layer).__name__ for layer in cache.layers],
            "model": self._model,
        }
        atomic_write_text(self._record_file(session_id), json.dumps(record, indent=1) + "\n")
        if old is not None and old != state_file:
            (self.directory / old).unlink(missing_ok=True)
        with self._lock:
            self._index[session_id] = record
            self._remember(session_id, cache)

    def delete(self, session_id: str) -> None:
        with self._lock:
            record = self._record(session_id)
            del self._index[session_id]
            self._hot.pop(session_id, None)
        self._record_file(session_id).unlink(missing_ok=True)
        (self.directory / record["state_file"]).unlink(missing_ok=True)

    def _remember(self, session_id: str, cache: Cache) -> None:
        """Put `cache` at the hot end of the LRU; evict the coldest past the limit (lock held)."""
        self._hot[session_id] = cache
        self._hot.move_to_end(session_id)
        while len(self._hot) > self._hot_limit:
            self._hot.popitem(last=False)

    def _record_file(self, session_id: str) -> Path:
        return self.directory / f"{session_id}.json"

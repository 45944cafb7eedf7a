"""Continuous batching over one model: every active choice is a row of one batched cache.

One engine thread owns the model. Each iteration it admits waiting jobs, feeds one
`prefill_chunk`-token piece of the oldest prompt being prefilled (each prompt alone, from its
session's state or a fresh one; when its last piece is in, a job with `n` choices becomes `n`
copies of that row), then decodes one token for every row at once. A row that finishes leaves the batch
(`Cache.select` of the rest); new rows join it (`Cache.stack`) between steps, so rows sit at
different positions, which every mixer's decode supports. Rows never share state, so a
request's tokens do not depend on what else is in the batch.

Sessions: a job with `session_id` starts from the session's state and, when it completes,
commits the state after its prompt and every token it generated, so the next request feeds
only its new prompt. TTT states decode in `chunked` mode, where decoding reproduces the dual
form's prefill: a session continued request by request ends in the state (and greedy tokens)
of one request of the whole history. A cancelled job leaves at the next step and commits
nothing; its session stays as it was.

Events reach the caller through the job's `sink` (called on the engine thread): `Piece` (new
text and ids of a choice), `Finished` (a choice's finish reason), then `Done` (the outcome,
after the session is committed) or `Failed`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from data_stage import Tokenizer
from ttt_core import TTTLM, Cache
from ttt_core.generate import prefill, sample_next

from .errors import ServeError
from .metrics import Metrics
from .sessions import SessionInfo, SessionStore
from .text import TextAssembler

log = logging.getLogger(__name__)


def empty_state(model: TTTLM) -> Cache:
    """An empty one-row state of `model`; TTT layers decode in chunked mode (= prefill)."""
    return model.new_cache(1, decode_mode="chunked")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None  # choice i samples from a generator seeded with seed + i
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    n: int = 1


@dataclass
class Choice:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)  # every generated id, EOS included
    finish_reason: str | None = None  # "stop" (EOS or a stop string) or "length"


@dataclass
class Outcome:
    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int
    session: SessionInfo | None


@dataclass(frozen=True)
class Piece:
    index: int
    text: str
    token_ids: list[int]


@dataclass(frozen=True)
class Finished:
    index: int
    reason: str


@dataclass(frozen=True)
class Done:
    outcome: Outcome


@dataclass(frozen=True)
class Failed:
    error: ServeError


Event = Piece | Finished | Done | Failed


class Job:
    """One request inside the engine: prompt ids, sampling, optional session; events to `sink`."""

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        sink: Callable[[Event], None],
        *,
        session_id: str | None = None,
    ) -> None:
        self.prompt_ids, self.params, self.sink = list(prompt_ids), params, sink
        self.session_id = session_id
        self.choices = [Choice(i) for i in range(params.n)]
        self.submitted = time.perf_counter()
        self.first_token_at: float | None = None
        self._live = params.n  # rows still in the engine
        self._cancelled = threading.Event()
        self.ended = False  # Done or Failed was sent: nothing more happens to this job

    def cancel(self) -> None:
        """The client went away: the job leaves at the next step and commits nothing."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class _Row:
    """One choice of one job in the batch; `pending` is its sampled token not yet decoded."""

    def __init__(self, job: Job, index: int, tokenizer: Tokenizer, device: torch.device):
        self.job, self.choice = job, job.choices[index]
        self.assembler = TextAssembler(tokenizer, job.params.stop)
        self.pending: int | None = None
        self.generator = None
        if job.params.temperature > 0:
            self.generator = torch.Generator(device=device)
            if job.params.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(job.params.seed + index)

    @property
    def leaving(self) -> bool:
        """Finished, and its state needs no more tokens (no session, or its last one is in)."""
        done = self.choice.finish_reason is not None
        return done and (self.pending is None or self.job.session_id is None)


class _Prefill:
    """A job whose prompt is being fed, `prefill_chunk` tokens per engine iteration."""

    def __init__(self, job: Job, cache: Cache, pieces: list[Tensor]):
        self.job, self.cache, self.pieces = job, cache, pieces
        self.logits: Tensor | None = None


class Engine:
    """The batching loop (module docstring). `max_batch` bounds the rows decoded together and
    the jobs waiting; `max_context` bounds a session's tokens, prompt and generation included;
    a prompt is prefilled `prefill_chunk` tokens per iteration (the same result: a prefill
    continues its cache exactly), so its working memory does not grow with its length and the
    rows decoding wait one piece per step for it, not its whole prefill."""

    def __init__(
        self,
        model: TTTLM,
        tokenizer: Tokenizer,
        store: SessionStore,
        *,
        max_batch: int,
        max_context: int,
        prefill_chunk: int = 2048,
        metrics: Metrics | None = None,
    ) -> None:
        self.model, self.tokenizer, self.store = model, tokenizer, store
        self.max_batch, self.max_context, self.prefill_chunk = max_batch, max_context, prefill_chunk
        self.metrics = metrics or Metrics()
        self.device = model.embed.weight.device
        # a model may have more ids than its tokenizer (a vocabulary padded for speed)
        self._unspoken = tokenizer.vocab_size < model.config.vocab_size
        self._cv = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._busy: set[str] = set()  # sessions with a job in the engine
        self._rows: list[_Row] = []  # engine thread only, aligned with self._cache's rows
        self._cache: Cache | None = None
        self._prefilling: deque[_Prefill] = deque()  # engine thread only
        self._stopping = False
        self._thread: threading.Thread | None = None

    def new_state(self) -> Cache:
        return empty_state(self.model)

    # ---- the caller's side ----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="serve-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the current step, then fail every job still here with 503."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()

    def submit(self, job: Job) -> None:
        """Queue `job`, or refuse it now: 400 (bad prompt, too long, n past the batch), 404 (no
        such session), 409 (the session is busy), 429 (the queue is full), 503 (stopping)."""
        params, prompt = job.params, job.prompt_ids
        if not prompt:
            raise ServeError(400, "prompt: empty; give at least one token", param="prompt")
        vocab = self.model.config.vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise ServeError(400, f"prompt: token ids must be in [0, {vocab})", param="prompt")
        if params.n > self.max_batch:
            raise ServeError(400, f"n: {params.n} exceeds the server's --max-batch "
                             f"{self.max_batch}", param="n")  # fmt: skip
        if job.session_id is not None and params.n != 1:
            raise ServeError(400, "n: a session continues one history; n must be 1", param="n")
        with self._cv:
            if self._stopping or (self._thread is not None and not self._thread.is_alive()):
                raise ServeError(503, "the server is shutting down")
            seen = 0
            if job.session_id is not None:
                seen = self.store.info(job.session_id).tokens_seen
                if job.session_id in self._busy:
                    raise ServeError(409, f"session {job.session_id!r} is answering another "
                                     "request; send the next one after it", param="session_id",
                                     code="session_busy")  # fmt: skip
            wanted = seen + len(prompt) + params.max_tokens
            if wanted > self.max_context:
                raise ServeError(
                    400,
                    f"this server's maximum context is {self.max_context} tokens; the request "
                    f"needs {wanted} ({seen} in the session, {len(prompt)} in the prompt, "
                    f"{params.max_tokens} to generate)",
                    param="prompt",
                    code="context_length_exceeded",
                )
            if len(self._waiting) >= self.max_batch:
                raise ServeError(429, f"{len(self._waiting)} requests are waiting already "
                                 f"(--max-batch {self.max_batch}); retry later",
                                 code="queue_full")  # fmt: skip
            if job.session_id is not None:
                self._busy.add(job.session_id)
            self._waiting.append(job)
            self.metrics.queue_depth.set(len(self._waiting))
            self._cv.notify_all()

    def is_busy(self, session_id: str) -> bool:
        with self._cv:
            return session_id in self._busy

    def delete_session(self, session_id: str) -> None:
        """Remove a session no request is using (404 unknown, 409 busy); atomic with `submit`,
        so no request can start on it meanwhile."""
        with self._cv:
            self.store.info(session_id)
            if session_id in self._busy:
                raise ServeError(409, f"session {session_id!r} is answering a request",
                                 param="session_id", code="session_busy")  # fmt: skip
            self.store.delete(session_id)

    # ---- the engine thread ------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        with torch.no_grad():
            while True:
                with self._cv:
                    while not (self._stopping or self._waiting or self._rows or self._prefilling):
                        self._cv.wait()
                    if self._stopping:
                        break
                    admitted = self._admit()
                try:
                    self._iterate(admitted)
                except Exception:  # outside any one job's work: fail them all, keep serving
                    log.exception("engine iteration failed")
                    jobs = [*admitted, *(p.job for p in self._prefilling),
                            *self._row_jobs()]  # fmt: skip
                    self._rows, self._cache, self._prefilling = [], None, deque()
                    for job in jobs:
                        self._end(job, Failed(ServeError(500, "generation failed (see the log)")))
                self.metrics.batch_size.set(len(self._rows))
        self._fail_all(ServeError(503, "the server is shutting down"))

    def _iterate(self, admitted: list[Job]) -> None:
        """One piece of the oldest prompt being prefilled, then one decode step: a long prompt
        delays the batch by one piece per step, not by its whole prefill."""
        self._drop_cancelled()
        for job in admitted:
            self._guarded(lambda job=job: self._begin(job), [job])
        if self._prefilling:
            head = self._prefilling[0]
            self._guarded(lambda: self._prefill_piece(head), [head.job])
        if self._rows:
            self._guarded(self._step, self._row_jobs())

    def _admit(self) -> list[Job]:
        """Waiting jobs whose choices fit beside the rows there are, in order (lock held)."""
        for job in [j for j in self._waiting if j.cancelled]:  # their clients left while waiting
            self._waiting.remove(job)
            self._drop(job)  # the condition's lock is reentrant
        admitted = []
        rows = len(self._rows) + sum(p.job.params.n for p in self._prefilling)
        while self._waiting and rows + self._waiting[0].params.n <= self.max_batch:
            job = self._waiting.popleft()
            admitted.append(job)
            rows += job.params.n
        self.metrics.queue_depth.set(len(self._waiting))
        return admitted

    def _guarded(self, work: Callable[[], None], jobs: list[Job]) -> None:
        """Run `work`; if it raises (a bug, out of memory), fail `jobs` with 500, drop their
        rows, and keep serving the others."""
        try:
            work()
        except Exception as e:  # the thread must outlive any one request
            log.exception("engine step failed")
            jobs = [j for j in jobs if not j.ended]  # a job that got Done keeps it
            failed = {id(j) for j in jobs}
            keep = [i for i, r in enumerate(self._rows) if id(r.job) not in failed]
            self._keep_rows(keep)
            self._prefilling = deque(p for p in self._prefilling if id(p.job) not in failed)
            error = (
                e
                if isinstance(e, ServeError)
                else ServeError(500, f"generation failed: {type(e).__name__}: {e}")
            )
            for job in jobs:
                self._end(job, Failed(error))

    def _begin(self, job: Job) -> None:
        """Start feeding the job's prompt, from its session's state or a fresh one."""
        if job.cancelled:
            self._drop(job)
            return
        cache = self.store.state(job.session_id) if job.session_id else self.new_state()
        prompt = torch.tensor(job.prompt_ids, dtype=torch.long, device=self.device)
        self._prefilling.append(_Prefill(job, cache, list(prompt.split(self.prefill_chunk))))

    def _prefill_piece(self, prefill_: _Prefill) -> None:
        """Feed the next piece of a prompt (the pieces continue one another's cache exactly);
        after the last, sample each choice's first token and join the batch."""
        piece = prefill_.pieces.pop(0)
        prefill_.logits, prefill_.cache = prefill(self.model, [piece], prefill_.cache)
        self.metrics.prompt_tokens.inc(piece.numel())
        if prefill_.pieces:
            return
        self._prefilling.popleft()
        job, cache, logits = prefill_.job, prefill_.cache, prefill_.logits
        n = job.params.n
        if n > 1:
            cache, logits = cache.select([0] * n), logits.expand(n, -1)
        rows = [_Row(job, i, self.tokenizer, self.device) for i in range(n)]
        rows, cache = self._settle(rows, cache, logits)
        if rows:
            self._rows += rows
            self._cache = cache if self._cache is None else Cache.stack([self._cache, cache])

    def _step(self) -> None:
        """Decode every row's pending token at once; settle what comes out."""
        started = time.perf_counter()
        tokens = torch.tensor([[r.pending] for r in self._rows], device=self.device)
        out = self.model.decode(tokens, self._cache)
        for row in self._rows:
            row.pending = None
        batch = len(self._rows)
        self._rows, self._cache = self._settle(self._rows, out.cache, out.logits[:, -1])
        self.metrics.step(batch, time.perf_counter() - started)

    def _settle(self, rows: list[_Row], cache: Cache, logits: Tensor) -> tuple[list[_Row], Cache]:
        """Advance each row on its logits; commit and drop the rows that are done. Returns the
        rows that stay and their cache."""
        for row, row_logits in zip(rows, logits, strict=True):
            self._advance(row, row_logits)
        keep = [i for i, row in enumerate(rows) if not row.leaving]
        for i, row in enumerate(rows):
            if row.leaving:
                self._leave(row, cache, i)
        if len(keep) == len(rows):
            return rows, cache
        return [rows[i] for i in keep], cache.select(keep) if keep else None

    def _advance(self, row: _Row, logits: Tensor) -> None:
        """Sample the row's next token (unless it has finished) and report it."""
        choice, params = row.choice, row.job.params
        if choice.finish_reason is not None:
            return  # its last token is in the state now: it leaves
        if len(choice.token_ids) >= params.max_tokens:  # max_tokens 0: the prompt only
            self._finish(row, "length")
            return
        if self._unspoken:  # ids the tokenizer cannot write are never sampled
            logits = logits.clone()
            logits[self.tokenizer.vocab_size :] = float("-inf")
        token = int(
            sample_next(
                logits[None],
                temperature=params.temperature,
                top_k=params.top_k,
                top_p=None if params.top_p >= 1 else params.top_p,
                generator=row.generator,
            )[0]
        )
        choice.token_ids.append(token)
        row.pending = token
        if token == self.tokenizer.eos_id and not params.ignore_eos:
            text, reason = row.assembler.rest(), "stop"
        else:
            text, stopped = row.assembler.add(token)
            reason = "stop" if stopped else None
            if reason is None and len(choice.token_ids) >= params.max_tokens:
                text, reason = text + row.assembler.rest(), "length"
        choice.text = row.assembler.text
        if row.job.first_token_at is None:
            row.job.first_token_at = time.perf_counter()
            self.metrics.time_to_first_token.observe(row.job.first_token_at - row.job.submitted)
        self.metrics.generated_tokens.inc()
        row.job.sink(Piece(choice.index, text, [token]))
        if reason is not None:
            self._finish(row, reason)

    def _finish(self, row: _Row, reason: str) -> None:
        row.choice.finish_reason = reason
        row.choice.text = row.assembler.text
        row.job.sink(Finished(row.choice.index, reason))

    def _leave(self, row: _Row, cache: Cache, index: int) -> None:
        """The row is done: commit its session's state; the job is done with its last row."""
        job = row.job
        job._live -= 1
        if job._live:
            return
        session = None
        if job.session_id is not None:
            self.store.put(job.session_id, cache.select([index]))
            session = self.store.info(job.session_id)
        completion = sum(len(c.token_ids) for c in job.choices)
        self._end(job, Done(Outcome(job.choices, len(job.prompt_ids), completion, session)))

    def _drop_cancelled(self) -> None:
        """Rows of cancelled jobs leave, uncommitted; a row that has finished stays to feed its
        last token and commit (its client has the whole answer)."""
        for prefill_ in [p for p in self._prefilling if p.job.cancelled]:
            self._prefilling.remove(prefill_)
            self._drop(prefill_.job)
        dropped = [r for r in self._rows if r.job.cancelled and r.choice.finish_reason is None]
        if not dropped:
            return
        for job in {id(r.job): r.job for r in dropped}.values():
            self._drop(job)
        gone = {id(r.job) for r in dropped}
        self._keep_rows([i for i, r in enumerate(self._rows) if id(r.job) not in gone])

    def _row_jobs(self) -> list[Job]:
        """The jobs of the rows in the batch, each once."""
        return list({id(r.job): r.job for r in self._rows}.values())

    def _drop(self, job: Job) -> None:
        """A job whose client left: free its session; it gets no more events."""
        self._release(job)
        job.ended = True

    def _keep_rows(self, keep: list[int]) -> None:
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        self._cache = self._cache.select(keep) if keep else None

    def _end(self, job: Job, event: Done | Failed) -> None:
        """The job's last event: its session is free again first, then its client hears."""
        self._release(job)
        job.ended = True
        job.sink(event)

    def _release(self, job: Job) -> None:
        if job.session_id is not None:
            with self._cv:
                self._busy.discard(job.session_id)

    def _fail_all(self, error: ServeError) -> None:
        with self._cv:
            jobs = [*self._waiting, *(p.job for p in self._prefilling),
                    *self._row_jobs()]  # fmt: skip
            self._waiting.clear()
        self._rows, self._cache, self._prefilling = [], None, deque()
        for job in jobs:
            if not job.ended:
                self._end(job, Failed(error))

"""The batching engine without HTTP: batching equals one at a time, sessions equal one request
of their whole history, cancellation commits nothing, and the refusals at submit."""

from __future__ import annotations

import pytest
import torch

from serve_stage.engine import Finished, Job, Piece, SamplingParams
from serve_stage.errors import ServeError
from ttt_core.generate import generate

from ..helpers import HANG_GUARD_S, wait_for
from .helpers import (
    VOCAB,
    FakeTokenizer,
    Waiter,
    greedy,
    make_engine,
    prompt_of,
    reference_tokens,
    submit,
    tiny_model,
)

STACKS_SERVED = ["ttt_linear", "attention", "hybrid", "swa", "lact", "e2e"]


@pytest.fixture
def record_batches(monkeypatch):
    """The batch size of every decode step the engine runs."""
    sizes: list[int] = []

    def watch(model):
        decode = model.decode

        def recorded(ids, cache):
            sizes.append(ids.shape[0])
            return decode(ids, cache)

        monkeypatch.setattr(model, "decode", recorded)
        return sizes

    return watch


@pytest.mark.parametrize("stack", STACKS_SERVED)
def test_a_batch_of_requests_equals_each_request_alone(stack, tmp_path, record_batches):
    """Prompts of different lengths, different max_tokens, all in one batch (submitted before
    the engine starts): each equals `generate` of that prompt alone."""
    model = tiny_model(stack)
    engine = make_engine(model, tmp_path)
    sizes = record_batches(model)
    prompts = [prompt_of(n, seed=n) for n in (5, 13, 9, 1)]
    lengths = [7, 6, 11, 6]  # prompts join one per step: all four overlap
    waiters = [submit(engine, p, greedy(m)) for p, m in zip(prompts, lengths, strict=True)]
    engine.start()
    try:
        outcomes = [w.outcome() for w in waiters]
    finally:
        engine.stop()
    for prompt, n, outcome in zip(prompts, lengths, outcomes, strict=True):
        assert outcome.choices[0].token_ids == reference_tokens(model, prompt, n)
        assert outcome.choices[0].finish_reason == "length"
        assert outcome.prompt_tokens == len(prompt) and outcome.completion_tokens == n
    assert max(sizes) == 4  # they were decoded together
    assert sizes[-1] == 1  # ... and left as they finished (11 tokens: the last one alone)


@pytest.mark.parametrize("stack", ["ttt_linear", "attention", "lact", "e2e"])
def test_a_session_continued_request_by_request_equals_one_request_of_its_history(stack, tmp_path):
    """Three requests on one session (lengths off the chunk size of 8, max_tokens 0 for one:
    the prompt only) give the tokens and the state of one request of the whole history."""
    model = tiny_model(stack).double()
    engine = make_engine(model, tmp_path)
    engine.start()
    try:
        session = engine.store.create("s1").id
        turns = [(prompt_of(11, 1), 5), (prompt_of(6, 2), 0), (prompt_of(3, 3), 9)]
        history: list[int] = []
        for prompt, n in turns:
            outcome = submit(engine, prompt, greedy(n), session).outcome()
            history += prompt
            if n:
                expected = reference_tokens(model, history, n)
                assert outcome.choices[0].token_ids == expected
                history += expected
            assert outcome.session.tokens_seen == len(history)
    finally:
        engine.stop()
    # the committed state acts as the state of one pass over the history: the next 12 tokens
    # (across a chunk boundary) get the same logits from both (slots a chunk has not reached
    # yet may hold other bytes, so the tensors themselves are not compared)
    with torch.no_grad():
        one_pass = model(torch.tensor([history]), cache=engine.new_state()).cache
        stored = engine.store.state(session)
        assert stored.offsets.tolist() == one_pass.offsets.tolist() == [len(history)]
        more = torch.tensor([prompt_of(12, 4)])
        torch.testing.assert_close(model(more, cache=stored).logits,
                                   model(more, cache=one_pass).logits, rtol=1e-9, atol=1e-9)  # fmt: skip


def test_sampling_is_seeded_per_choice_and_does_not_depend_on_the_batch(tmp_path):
    model = tiny_model()
    engine = make_engine(model, tmp_path)
    prompt = prompt_of(9, 4)
    sampled = SamplingParams(max_tokens=12, temperature=1.0, top_k=50, seed=7, n=3,
                             ignore_eos=True)  # fmt: skip
    crowd = [submit(engine, prompt_of(4, s), greedy(20)) for s in range(3)]
    together = submit(engine, prompt, sampled)
    engine.start()
    try:
        batched = [c.token_ids for c in together.outcome().choices]
        for w in crowd:
            w.outcome()
        alone = [c.token_ids for c in submit(engine, prompt, sampled).outcome().choices]
    finally:
        engine.stop()
    assert batched == alone
    assert len({tuple(t) for t in batched}) == 3  # seed + i: the choices differ


def test_stop_string_eos_and_length_end_a_choice(tmp_path):
    """A stop string ends a choice with "stop" and is cut from its text (its tokens stay in
    token_ids); EOS ends it with "stop" unless ignore_eos; max_tokens with "length"."""
    model = tiny_model()
    engine = make_engine(model, tmp_path)
    engine.start()
    try:
        prompt = prompt_of(5, 5)
        free = submit(engine, prompt, greedy(12)).outcome().choices[0]
        stop = free.text[4:6]  # what the greedy text holds at characters 4-5
        cut = submit(engine, prompt, greedy(12, stop=(stop,))).outcome().choices[0]
    finally:
        engine.stop()
    first = free.text.find(stop)
    assert cut.finish_reason == "stop" and cut.text == free.text[:first]
    assert cut.token_ids == free.token_ids[: first + len(stop)]
    assert free.finish_reason == "length" and len(free.token_ids) == 12


def test_eos_ends_a_choice_unless_ignored(tmp_path):
    model = tiny_model()
    head = model.lm_head

    class FavourEOS(torch.nn.Module):  # EOS (id 2) the likeliest token after any input
        def forward(self, x):
            return head(x) + 100 * torch.nn.functional.one_hot(torch.tensor(2), VOCAB)

    model.lm_head = FavourEOS()
    engine = make_engine(model, tmp_path)
    engine.start()
    try:
        stopped = submit(engine, [5, 6], SamplingParams(max_tokens=5, temperature=0)).outcome()
        ignored = submit(engine, [5, 6], greedy(5)).outcome()
    finally:
        engine.stop()
    probe = generate(model, [[5, 6]], 1).tokens[0].tolist()
    assert probe == [2]  # the setup works: greedy picks EOS
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].token_ids == [2] and stopped.choices[0].text == ""
    assert ignored.choices[0].finish_reason == "length" and len(ignored.choices[0].token_ids) == 5


def test_streamed_pieces_add_up_to_the_final_text(tmp_path):
    model = tiny_model()
    engine = make_engine(model, tmp_path)
    engine.start()
    try:
        waiter = submit(engine, prompt_of(7, 6), greedy(15, stop=("zz",)))
        outcome = waiter.outcome()
    finally:
        engine.stop()
    pieces = [e for e in waiter.seen if isinstance(e, Piece)]
    assert "".join(p.text for p in pieces) == outcome.choices[0].text
    assert [t for p in pieces for t in p.token_ids] == outcome.choices[0].token_ids
    assert [e.reason for e in waiter.seen if isinstance(e, Finished)] == [
        outcome.choices[0].finish_reason
    ]


@pytest.mark.parametrize("stack", ["ttt_linear", "attention"])
def test_a_cancelled_request_leaves_the_batch_and_commits_nothing(tmp_path, stack):
    """The session continues as if the cancelled request had never been sent (its state in
    memory, which the cancelled request started from, was not changed in place)."""
    model = tiny_model(stack)
    engine = make_engine(model, tmp_path)
    engine.start()
    try:
        session = engine.store.create().id
        first = submit(engine, prompt_of(4, 7), greedy(3), session).outcome()
        history = [*prompt_of(4, 7), *first.choices[0].token_ids]
        before = engine.store.info(session).tokens_seen
        waiter = Waiter()
        job = Job(prompt_of(5, 8), greedy(3000), waiter, session_id=session)
        engine.submit(job)
        assert isinstance(waiter.events.get(timeout=HANG_GUARD_S), Piece)  # it has begun
        job.cancel()
        # the session is free again once the job has left, and was not changed
        wait_for(lambda: not engine.is_busy(session), "the cancelled job to leave")
        assert engine.store.info(session).tokens_seen == before
        after = submit(engine, prompt_of(2, 9), greedy(2), session).outcome()
        assert after.session.tokens_seen == before + 2 + 2
        assert after.choices[0].token_ids == reference_tokens(
            model, [*history, *prompt_of(2, 9)], 2
        )
    finally:
        engine.stop()


def test_refusals_at_submit(tmp_path):
    model = tiny_model()
    engine = make_engine(model, tmp_path, max_batch=2, max_context=40)

    def refused(prompt, params, session=None) -> ServeError:
        with pytest.raises(ServeError) as e:
            submit(engine, prompt, params, session)
        return e.value

    assert refused([], greedy(1)).status == 400
    assert refused([VOCAB], greedy(1)).status == 400
    assert refused([3], greedy(1, n=3)).status == 400  # n past --max-batch
    long = refused(prompt_of(30, 1), greedy(11))
    assert (long.status, long.code) == (400, "context_length_exceeded")
    assert refused([3], greedy(1), "nobody").status == 404
    session = engine.store.create().id
    submit(engine, [3, 4], greedy(1), session)  # not started: it waits
    assert refused([5], greedy(1), session).code == "session_busy"
    submit(engine, [3], greedy(1))
    full = refused([3], greedy(1))
    assert (full.status, full.code) == (429, "queue_full")
    engine.start()
    engine.stop()


def test_ids_the_tokenizer_cannot_write_are_never_sampled(tmp_path):
    """A model with more ids than its tokenizer (a padded vocabulary) samples only ids the
    tokenizer has, however hot the sampling."""

    class SmallTokenizer(FakeTokenizer):
        vocab_size = 40

    engine = make_engine(tiny_model(), tmp_path, tokenizer=SmallTokenizer())
    engine.start()
    try:
        hot = SamplingParams(max_tokens=200, temperature=2.0, seed=0, ignore_eos=True)
        ids = submit(engine, prompt_of(5, 1), hot).outcome().choices[0].token_ids
    finally:
        engine.stop()
    assert len(ids) == 200 and max(ids) < 40


def test_a_finished_reply_is_committed_even_if_its_client_leaves_at_once(tmp_path):
    """A client that closes on `finish_reason` has the whole answer: the session commits it
    (the row still feeds its last token), whenever the cancel arrives."""
    engine = make_engine(tiny_model(), tmp_path)
    engine.start()
    try:
        session = engine.store.create().id
        waiter = Waiter()
        job = Job(prompt_of(6, 2), greedy(4), waiter, session_id=session)
        engine.submit(job)
        while not isinstance(waiter.events.get(timeout=HANG_GUARD_S), Finished):
            pass
        job.cancel()
        wait_for(lambda: not engine.is_busy(session), "the job to leave")
        assert engine.store.info(session).tokens_seen == 6 + 4
    finally:
        engine.stop()


def test_a_request_cancelled_while_waiting_frees_its_session_at_once(tmp_path):
    engine = make_engine(tiny_model(), tmp_path, max_batch=1)
    session = engine.store.create().id
    engine.start()
    try:
        busy = submit(engine, prompt_of(3, 1), greedy(3000))  # holds the only row
        assert isinstance(busy.events.get(timeout=HANG_GUARD_S), Piece)  # it is decoding
        queued = Job(prompt_of(3, 2), greedy(2), Waiter(), session_id=session)
        engine.submit(queued)  # waits for the row
        with pytest.raises(ServeError) as e:  # a session in use cannot be deleted
            engine.delete_session(session)
        assert e.value.code == "session_busy"
        queued.cancel()
        wait_for(lambda: not engine.is_busy(session), "the waiting job to be dropped")
        assert engine.store.info(session).tokens_seen == 0
        engine.delete_session(session)
        assert session not in engine.store
    finally:
        engine.stop()


def test_a_long_prompt_is_prefilled_between_decode_steps(tmp_path, monkeypatch):
    """Prompt pieces and decode steps alternate: the rows decoding wait one piece per step,
    and both requests still get what they get alone."""
    model = tiny_model()
    calls: list[str] = []
    forward, decode = model.forward, model.decode
    monkeypatch.setattr(
        model, "forward", lambda ids, **kw: calls.append("piece") or forward(ids, **kw)
    )
    monkeypatch.setattr(model, "decode", lambda ids, c: calls.append("step") or decode(ids, c))
    engine = make_engine(model, tmp_path, prefill_chunk=8)
    first, second = prompt_of(4, 1), prompt_of(40, 2)  # the second: 5 pieces of 8
    engine.start()
    try:
        early = submit(engine, first, greedy(60))
        assert isinstance(early.events.get(timeout=HANG_GUARD_S), Piece)  # decoding
        late = submit(engine, second, greedy(5))
        outcomes = early.outcome(), late.outcome()
    finally:
        engine.stop()
    monkeypatch.undo()
    assert outcomes[0].choices[0].token_ids == reference_tokens(model, first, 60)
    assert outcomes[1].choices[0].token_ids == reference_tokens(model, second, 5)
    pieces = [i for i, c in enumerate(calls) if c == "piece"][1:]  # the second prompt's
    assert len(pieces) == 5
    assert all(calls[i + 1] == "step" for i in pieces[:-1])  # a step after every piece

"""The server as its users meet it: the OpenAI client unchanged, SSE on the wire, sessions,
errors in OpenAI's shape, batching, the queue bound and disconnects (one served process)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from ..helpers import wait_for

MODEL = "tiny-ttt"
LONG = 90_000  # max_tokens of a request that is still generating when the test closes it


def complete(server, prompt, max_tokens=8, **extra) -> dict:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "return_token_ids": True, **extra}  # fmt: skip
    r = httpx.post(f"{server.base}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_openai_client_lists_completes_streams_and_chats(server):
    client = server.client()
    assert [m.id for m in client.models.list()] == [MODEL]
    whole = client.completions.create(model=MODEL, prompt="def main(", max_tokens=12,
                                      temperature=0)  # fmt: skip
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 12 and whole.usage.prompt_tokens > 1
    stream = client.completions.create(model=MODEL, prompt="def main(", max_tokens=12,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].choices == []
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user",
                                          "content": "hello"}], max_tokens=6, temperature=0)  # fmt: skip
    assert chat.choices[0].message.role == "assistant"
    streamed = client.chat.completions.create(model=MODEL, messages=[{"role": "user",
                                              "content": "hello"}], max_tokens=6,
                                              temperature=0, stream=True)  # fmt: skip
    parts = list(streamed)
    assert parts[0].choices[0].delta.role == "assistant"
    text = "".join(p.choices[0].delta.content or "" for p in parts)
    assert text == chat.choices[0].message.content
    assert parts[-1].choices[0].finish_reason == chat.choices[0].finish_reason


def test_seeded_sampling_is_reproducible_and_choices_differ(server):
    client = server.client()

    def sample():
        return client.completions.create(model=MODEL, prompt="import", max_tokens=10, n=2,
                                         temperature=1.0, seed=3)  # fmt: skip

    first, again = sample(), sample()
    texts = [c.text for c in first.choices]
    assert texts == [c.text for c in again.choices] and texts[0] != texts[1]


def test_the_stream_on_the_wire_is_data_lines_with_one_id_ending_in_done(server):
    body = {"model": MODEL, "prompt": "x = ", "max_tokens": 5, "temperature": 0, "stream": True,
            "return_token_ids": True}  # fmt: skip
    with httpx.stream("POST", f"{server.base}/v1/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    ids = [t for c in chunks for t in c["choices"][0].get("token_ids", [])]
    assert ids == complete(server, "x = ", 5)["choices"][0]["token_ids"]


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
        ({"prompt": ""}, 400, "prompt"),
        ({"prompt": [1] * 99_990, "max_tokens": 16}, 400, "prompt"),  # past --max-context
        ({"prompt": [99999]}, 400, "prompt"),
        ({"prompt": "x", "temperature": 3}, 400, "temperature"),
        ({"prompt": "x", "logprobs": 2}, 400, None),
        ({"prompt": "x", "logprobs": 0}, 400, None),  # 0 asks for the sampled tokens' logprobs
        ({"prompt": "x", "frobnicate": 1}, 400, None),
        ({"prompt": "x", "model": "other"}, 404, "model"),
        ({"prompt": "x", "session_id": "nobody"}, 404, "session_id"),
    ],
)
def test_bad_requests_get_openai_errors(server, body, status, param):
    r = httpx.post(f"{server.base}/v1/completions", json={"model": MODEL, **body}, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(server, value):
    body = f'{{"model": "{MODEL}", "prompt": "x", "temperature": {value}}}'.encode()
    r = httpx.post(f"{server.base}/v1/completions", content=body, timeout=60,
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature", r.text


def test_fields_asking_for_nothing_are_accepted(server):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2, "presence_penalty": 0,
            "frequency_penalty": 0.0, "best_of": 1, "logprobs": None, "echo": False}  # fmt: skip
    assert httpx.post(f"{server.base}/v1/completions", json=body, timeout=60).status_code == 200


def test_malformed_json_and_unknown_routes_get_openai_errors(server):
    r = httpx.post(f"{server.base}/v1/completions", content=b'{"model": ', timeout=60,
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    r = httpx.get(f"{server.base}/v1/nothing", timeout=60)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError):
        server.client().completions.create(model=MODEL, prompt="x", max_tokens=-1)


def test_a_session_continues_exactly_and_can_be_read_and_deleted(server):
    created = httpx.post(f"{server.base}/v1/sessions", json={"session_id": "chat-1"}).json()
    assert created["tokens_seen"] == 0 and created["id"] == "chat-1"
    first = complete(server, "def add(a, b):", 7, session_id="chat-1")
    second = complete(server, [17, 18, 19], 9, session_id="chat-1")
    assert first["session_id"] == second["session_id"] == "chat-1"
    info = httpx.get(f"{server.base}/v1/sessions/chat-1").json()
    alone = complete(server, "def add(a, b):", 7)
    history = [*_prompt_ids(server, "def add(a, b):"), *first["choices"][0]["token_ids"],
               17, 18, 19]  # fmt: skip
    assert info["tokens_seen"] == len(history) + 9
    assert alone["choices"][0]["token_ids"] == first["choices"][0]["token_ids"]
    whole = complete(server, history, 9)
    assert second["choices"][0]["token_ids"] == whole["choices"][0]["token_ids"]
    assert httpx.delete(f"{server.base}/v1/sessions/chat-1").json()["deleted"] is True
    assert httpx.get(f"{server.base}/v1/sessions/chat-1").status_code == 404


def _prompt_ids(server, text: str) -> list[int]:
    """The ids the server fed for `text` as a fresh prompt: BOS and the tokenizer's ids."""
    r = complete(server, text, 0)
    assert r["usage"]["prompt_tokens"] > 0
    from data_stage import load_tokenizer

    tokenizer = load_tokenizer(server_model_dir(server) / "tokenizer")
    ids = [tokenizer.bos_id, *tokenizer.encode(text)]
    assert len(ids) == r["usage"]["prompt_tokens"]
    return ids


def server_model_dir(server):
    from pathlib import Path

    return Path(server.model)


def test_concurrent_requests_get_what_each_gets_alone(server):
    prompts = [[5 + i] * (3 + 2 * i) for i in range(5)]
    alone = [complete(server, p, 10)["choices"][0]["token_ids"] for p in prompts]
    with ThreadPoolExecutor(5) as pool:
        together = list(pool.map(lambda p: _retrying(server, p, 10), prompts))
    assert together == alone


def _retrying(server, prompt, n):
    """A request that retries while the queue (2 waiting beside 2 in the batch) is full."""

    def attempt():
        r = httpx.post(f"{server.base}/v1/completions", timeout=120, json={
            "model": MODEL, "prompt": prompt, "max_tokens": n, "temperature": 0,
            "return_token_ids": True})  # fmt: skip
        assert r.status_code in (200, 429), r.text
        return r.json()["choices"][0]["token_ids"] if r.status_code == 200 else None

    return wait_for(attempt, "a free place in the queue", every_s=0.05)


def metric(server, name: str) -> float:
    text = httpx.get(f"{server.base}/metrics").text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name)))


def test_a_full_queue_answers_429_and_closed_streams_free_their_rows(server):
    """--max-batch 2: at most 2 rows decode and 2 requests wait, so of streams that never end
    by themselves at most 4 are taken and the next is refused; closing them cancels them."""
    body = {"model": MODEL, "prompt": "a", "max_tokens": LONG, "temperature": 0, "stream": True,
            "ignore_eos": True}  # fmt: skip
    client = httpx.Client(base_url=server.base, timeout=60)
    streams, refused = [], None
    while refused is None:
        stream = client.stream("POST", "/v1/completions", json=body)
        response = stream.__enter__()  # the status comes once the job is queued or refused
        if response.status_code == 429:
            refused = response.read()
        streams.append(stream)
        assert len(streams) <= 5
    assert json.loads(refused)["error"]["code"] == "queue_full"
    assert len(streams) - 1 in (3, 4)  # 2 decoding + 2 waiting (or 1 + 2 mid-admission)
    for stream in streams:
        stream.__exit__(None, None, None)
    client.close()
    wait_for(lambda: metric(server, "ttt_serve_batch_size") == 0
             and metric(server, "ttt_serve_queue_depth") == 0, "the cancelled rows to leave",
             every_s=0.2)  # fmt: skip
    assert metric(server, "ttt_serve_generated_tokens_total") < LONG  # all were cut short


def test_a_client_that_leaves_mid_stream_leaves_its_session_as_it_was(server):
    sid = httpx.post(f"{server.base}/v1/sessions").json()["id"]
    complete(server, "print(", 3, session_id=sid)
    seen = httpx.get(f"{server.base}/v1/sessions/{sid}").json()["tokens_seen"]
    body = {"model": MODEL, "prompt": "x", "max_tokens": LONG, "temperature": 0, "stream": True,
            "ignore_eos": True, "session_id": sid}  # fmt: skip
    with httpx.stream("POST", f"{server.base}/v1/completions", json=body, timeout=60) as r:
        next(line for line in r.iter_lines() if line.startswith("data: {"))  # it has begun

    def session():
        return httpx.get(f"{server.base}/v1/sessions/{sid}").json()

    wait_for(lambda: not session()["busy"], "the cancelled job to leave", every_s=0.1)
    assert session()["tokens_seen"] == seen  # nothing of the cut request was committed
    assert complete_status(server, sid) == 200  # and the session takes requests again
    assert session()["tokens_seen"] == seen + 2


def complete_status(server, sid) -> int:
    r = httpx.post(f"{server.base}/v1/completions", timeout=60, json={
        "model": MODEL, "prompt": [5, 6], "max_tokens": 0, "session_id": sid})  # fmt: skip
    return r.status_code


def test_health_and_metrics(server):
    assert httpx.get(f"{server.base}/health").json()["status"] == "ok"
    text = httpx.get(f"{server.base}/metrics").text
    for name in ("ttt_serve_requests_total", "ttt_serve_generated_tokens_total",
                 "ttt_serve_batch_size", "ttt_serve_sessions", "ttt_serve_session_state_bytes",
                 "ttt_serve_decode_tokens_per_second", "ttt_serve_time_to_first_token_seconds"):  # fmt: skip
        assert name in text, name
    assert metric(server, 'ttt_serve_requests_total{endpoint="/v1/completions",status="200"}') > 0

"""The session store (atomic commits, recovery, LRU, damage) and stop strings in text."""

from __future__ import annotations

import json

import pytest
import torch

from serve_stage.errors import ServeError
from serve_stage.sessions import SessionStore
from serve_stage.text import TextAssembler

from .helpers import FakeTokenizer, prompt_of, tiny_model


def store_for(model, directory, hot=2) -> SessionStore:
    return SessionStore(directory, hot=hot, new_state=lambda: model.new_cache(1, decode_mode="chunked"),
                        model_config=model.config.model_dump(), device="cpu")  # fmt: skip


def advanced(model, state, n: int, seed: int):
    with torch.no_grad():
        return model(torch.tensor([prompt_of(n, seed)]), cache=state).cache


def test_a_reopened_store_has_every_session_and_continues_it_bit_for_bit(tmp_path):
    model = tiny_model()
    store = store_for(model, tmp_path)
    ids = [store.create(f"s{i}").id for i in range(3)]  # hot=2: s0 is evicted from memory
    for i, sid in enumerate(ids):
        store.put(sid, advanced(model, store.state(sid), 5 + i, seed=i))
    assert not store.info("s0").in_memory and store.info("s2").in_memory
    reopened = store_for(model, tmp_path)
    more = torch.tensor([prompt_of(4, 9)])
    with torch.no_grad():
        for sid in ids:
            assert reopened.info(sid).tokens_seen == store.info(sid).tokens_seen
            a = model(more, cache=reopened.state(sid)).logits
            b = model(more, cache=store.state(sid)).logits
            assert torch.equal(a, b)
    names = sorted(p.name for p in (tmp_path / "sessions").iterdir())
    assert len(names) == 6  # a record and one state file each: old states were removed


def test_a_write_that_never_finished_leaves_the_last_commit(tmp_path):
    """What a kill between the steps of `put` leaves behind: a temp, or a new state file no
    record names. Reopening removes both and serves the committed state."""
    model = tiny_model()
    store = store_for(model, tmp_path)
    sid = store.create("s").id
    store.put(sid, advanced(model, store.state(sid), 6, seed=1))
    sessions = tmp_path / "sessions"
    (sessions / ".s.safetensors.123.tmp").write_bytes(b"partial")
    (sessions / "s.0123456789ab.safetensors").write_bytes(b"uncommitted")
    reopened = store_for(model, tmp_path)
    assert reopened.info(sid).tokens_seen == 6
    assert sorted(p.name for p in sessions.iterdir()) == sorted(
        ["s.json", json.loads((sessions / "s.json").read_text())["state_file"]]
    )


def test_a_damaged_state_is_refused_and_ids_are_checked(tmp_path):
    model = tiny_model()
    store = store_for(model, tmp_path)
    sid = store.create("s").id
    record = json.loads((tmp_path / "sessions" / "s.json").read_text())
    path = tmp_path / "sessions" / record["state_file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ServeError, match="damaged"):
        store_for(model, tmp_path).state(sid)  # a new store: nothing in memory
    with pytest.raises(ServeError) as e:
        store.create("../escape")
    assert e.value.status == 400
    with pytest.raises(ServeError) as e:
        store.create("s")
    assert e.value.status == 409
    store.delete("s")
    with pytest.raises(ServeError) as e:
        store.info("s")
    assert e.value.status == 404
    assert list((tmp_path / "sessions").iterdir()) == []


def test_a_state_of_another_model_is_refused(tmp_path):
    store = store_for(tiny_model(), tmp_path)
    store.create("s")
    other = tiny_model("attention")
    with pytest.raises(ValueError, match="different model config"):
        store_for(other, tmp_path).state("s")


def feed(stop: tuple[str, ...], text: str) -> tuple[list[str], bool, str]:
    """Pieces shown as `text` arrives one character (one id) at a time."""
    tokenizer = FakeTokenizer()
    assembler = TextAssembler(tokenizer, stop)
    pieces, stopped = [], False
    for (token,) in map(tokenizer.encode, text):
        piece, stopped = assembler.add(token)
        pieces.append(piece)
        if stopped:
            break
    if not stopped:
        pieces.append(assembler.rest())
    return pieces, stopped, assembler.text


def test_text_is_cut_before_the_stop_string_and_never_shows_a_part_of_it():
    pieces, stopped, text = feed(("cde",), "abcdefg")
    assert stopped and text == "ab"
    assert pieces == ["a", "b", "", "", ""]  # "c", "cd" held back: they may begin the stop
    pieces, stopped, text = feed(("cde",), "abcdxf")
    assert not stopped and text == "abcdxf" and "".join(pieces) == text
    assert pieces[:4] == ["a", "b", "", ""] and pieces[4] == "cdx"


def test_the_earliest_of_several_stop_strings_wins():
    _, stopped, text = feed(("fg", "de"), "abcdefgh")
    assert stopped and text == "abc"


def test_a_session_of_ttt_stays_one_size_and_one_of_attention_grows(tmp_path):
    sizes = {}
    for stack in ("ttt_linear", "attention"):
        model = tiny_model(stack)
        store = store_for(model, tmp_path / stack)
        sid = store.create("s").id
        grown = []
        for n in (8, 56):
            store.put(sid, advanced(model, store.state(sid), n, seed=n))
            grown.append(store.info(sid).state_bytes)
        sizes[stack] = grown
    assert sizes["ttt_linear"][0] == sizes["ttt_linear"][1]
    assert sizes["attention"][1] > 6 * sizes["attention"][0]  # 64 tokens of keys vs 8


def test_an_exports_chat_template_is_used_and_a_bad_one_refused(tmp_path):
    from serve_stage.chat_template import DEFAULT_STOP, load_chat_template
    from serve_stage.errors import ServeInputError

    default = load_chat_template(tmp_path)
    assert default.origin == "default" and default.stop == DEFAULT_STOP
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert default.render(messages, continuation=False) == "System: be brief\nUser: hi\nAssistant:"
    assert default.render(messages[1:], continuation=True) == "\nUser: hi\nAssistant:"
    (tmp_path / "chat_template.json").write_text(json.dumps(
        {"template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<bot>",
         "stop": ["<user>"]}))  # fmt: skip
    own = load_chat_template(tmp_path)
    assert own.render(messages, continuation=False) == "<system>be brief<user>hi<bot>"
    assert own.stop == ("<user>",)
    (tmp_path / "chat_template.json").write_text('{"template": "{% for %}"}')
    with pytest.raises(ServeInputError, match="does not compile"):
        load_chat_template(tmp_path)


def test_a_session_made_by_another_export_is_refused(tmp_path):
    model = tiny_model()

    def store(digest: str) -> SessionStore:
        return SessionStore(tmp_path, hot=2, new_state=lambda: model.new_cache(1),
                            model_config=model.config.model_dump(), device="cpu",
                            model_digest=digest)  # fmt: skip

    store("weights-a").create("s")
    assert store("weights-a").state("s").offsets.tolist() == [0]
    with pytest.raises(ServeError) as e:
        store("weights-b").state("s")
    assert (e.value.status, e.value.code) == (409, "session_model_mismatch")

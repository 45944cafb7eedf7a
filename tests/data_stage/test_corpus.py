"""Corpus readers: text files and folders, paragraph splitting, JSONL, Parquet, the stdlib corpus."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from data_stage import Corpus, CorpusConfig, CorpusError, stdlib_root
from data_stage.corpus import stdlib_files
from data_stage.readers import split_paragraphs


def docs(cfg: CorpusConfig) -> list[tuple[str, str]]:
    return [(d.identity, d.text) for d in Corpus(cfg)]


def test_folder_gives_one_document_per_file_sorted_with_relative_identities(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("zed")
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / ".hidden").write_text("secret")
    assert docs(CorpusConfig(paths=[str(tmp_path)])) == [("a.txt", "alpha"), ("b/z.txt", "zed")]


def test_glob_identity_is_relative_to_the_non_glob_prefix(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "one.txt").write_text("1")
    (tmp_path / "two.txt").write_text("2")
    got = docs(CorpusConfig(paths=[f"{tmp_path}/**/*.txt"]))
    assert got == [("two.txt", "2"), ("x/one.txt", "1")]


def test_file_listed_twice_is_read_once(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha")
    assert len(docs(CorpusConfig(paths=[str(tmp_path / "a.txt"), f"{tmp_path}/*.txt"]))) == 1


def test_missing_path_and_empty_glob_name_the_pattern(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        Corpus(CorpusConfig(paths=[str(tmp_path / "nope.txt")]))
    with pytest.raises(CorpusError, match=r"matched no files"):
        Corpus(CorpusConfig(paths=[f"{tmp_path}/*.md"]))


def test_empty_text_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("fine")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(CorpusError, match=r"empty\.txt: empty file"):
        docs(CorpusConfig(paths=[str(tmp_path)]))


def test_unreadable_file_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "locked.txt"
    path.write_text("x")

    def deny(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(CorpusError, match=r"locked\.txt: cannot read \(Permission denied\)"):
        docs(CorpusConfig(paths=[str(path)]))


def test_invalid_utf8_is_replaced_counted_and_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 ok \xff\xfe end")
    (tmp_path / "good.txt").write_text("fine")
    corpus = Corpus(CorpusConfig(paths=[str(tmp_path)]))
    with caplog.at_level(logging.WARNING):
        got = [d.text for d in corpus]
    assert got == ["caf\ufffd ok \ufffd\ufffd end", "fine"]
    assert corpus.stats.invalid_utf8_documents == 1
    assert "bad.txt" in caplog.text


def test_split_paragraphs_groups_to_target_and_is_lossless() -> None:
    paras = [f"paragraph {i} " + "word " * (i % 5 + 1) for i in range(30)]
    text = "\n\n".join(paras) + "\n \n\nlast line without newline"
    pieces = split_paragraphs(text, 100)
    assert "".join(pieces) == text
    assert all(len(p.encode()) >= 100 for p in pieces[:-1])
    # Cuts fall only after blank lines.
    assert all(p.endswith("\n\n") or p.endswith("\n \n\n") for p in pieces[:-1])
    assert len(pieces) > 5


def test_large_text_file_is_split_into_indexed_documents(tmp_path: Path) -> None:
    book = "\n\n".join(f"Chapter line {i}. " * 20 for i in range(50))
    (tmp_path / "book.txt").write_text(book)
    got = docs(CorpusConfig(paths=[str(tmp_path / "book.txt")], doc_bytes=2000))
    assert [ident for ident, _ in got] == [f"book.txt#{i}" for i in range(len(got))]
    assert len(got) > 5
    assert "".join(text for _, text in got) == book
    # With splitting disabled it is one document.
    assert len(docs(CorpusConfig(paths=[str(tmp_path / "book.txt")], doc_bytes=None))) == 1


def test_jsonl_reads_the_configured_field_and_skips_empty_records(tmp_path: Path) -> None:
    rows = [{"body": "first", "id": 1}, {"body": ""}, {"body": None}, {"body": "fourth ü"}]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    corpus = Corpus(CorpusConfig(paths=[str(path)], text_field="body"))
    assert [(d.identity, d.text) for d in corpus] == [
        ("data.jsonl:1", "first"),
        ("data.jsonl:4", "fourth ü"),
    ]
    assert corpus.stats.skipped_empty_records == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"text": \n', r"data\.jsonl:2: invalid JSON"),
        ('{"body": "x"}\n', r"data\.jsonl:1: no field 'text' \(fields: body\)"),
        ('{"text": 3}\n', r"data\.jsonl:1: field 'text' is int"),
        ("[1, 2]\n", r"data\.jsonl:1: expected a JSON object"),
        ('{"text": ""}\n', r"data\.jsonl: no non-empty 'text' values"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "data.jsonl").write_text(content)
    with pytest.raises(CorpusError, match=message):
        docs(CorpusConfig(paths=[str(tmp_path / "data.jsonl")]))


def test_jsonl_lone_surrogate_escape_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "s.jsonl").write_text('{"text": "a\\ud800b"}\n')
    corpus = Corpus(CorpusConfig(paths=[str(tmp_path / "s.jsonl")]))
    assert [d.text for d in corpus] == ["a\ufffdb"]
    assert corpus.stats.invalid_utf8_documents == 1


def test_parquet_reads_the_configured_column_with_row_identities(tmp_path: Path) -> None:
    path = tmp_path / "part.parquet"
    table = pa.table({"content": ["zero", None, "two ✓", ""], "n": [0, 1, 2, 3]})
    pq.write_table(table, path, row_group_size=2)
    corpus = Corpus(CorpusConfig(paths=[str(path)], text_field="content"))
    assert [(d.identity, d.text) for d in corpus] == [
        ("part.parquet:0", "zero"),
        ("part.parquet:2", "two ✓"),
    ]
    assert corpus.stats.skipped_empty_records == 2


def test_parquet_errors_name_the_file(tmp_path: Path) -> None:
    pq.write_table(pa.table({"n": [1]}), tmp_path / "ints.parquet")
    with pytest.raises(CorpusError, match=r"ints\.parquet: no column 'text' \(columns: n\)"):
        docs(CorpusConfig(paths=[str(tmp_path / "ints.parquet")]))
    pq.write_table(pa.table({"text": [1]}), tmp_path / "wrong.parquet")
    with pytest.raises(CorpusError, match=r"wrong\.parquet: column 'text' is int64"):
        docs(CorpusConfig(paths=[str(tmp_path / "wrong.parquet")]))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CorpusError, match=r"junk\.parquet: not a readable Parquet file"):
        docs(CorpusConfig(paths=[str(tmp_path / "junk.parquet")]))


def test_auto_format_picks_reader_by_suffix(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "from jsonl"}\n')
    pq.write_table(pa.table({"text": ["from parquet"]}), tmp_path / "b.parquet")
    (tmp_path / "c.txt").write_text("from text")
    assert [t for _, t in docs(CorpusConfig(paths=[str(tmp_path)]))] == [
        "from jsonl",
        "from parquet",
        "from text",
    ]


def test_max_bytes_stops_before_the_document_that_would_exceed(tmp_path: Path) -> None:
    for name in "abc":
        (tmp_path / f"{name}.txt").write_text(name * 10)
    assert len(docs(CorpusConfig(paths=[str(tmp_path)], max_bytes=25))) == 2
    with pytest.raises(CorpusError, match="max_bytes=5"):
        docs(CorpusConfig(paths=[str(tmp_path)], max_bytes=5))


def test_embedded_corpus_is_sorted_stdlib_without_tests_or_site_packages() -> None:
    files = stdlib_files()
    identities = [ident for ident, _ in files]
    assert identities == sorted(identities)
    assert all(path.is_relative_to(stdlib_root()) for _, path in files)
    for ident in identities:
        folders = ident.split("/")[:-1]
        assert not {"test", "tests", "idle_test", "site-packages"} & set(folders), ident
    assert "argparse.py" in identities and "json/decoder.py" in identities
    assert len(files) > 300


def test_embedded_corpus_is_the_default_and_honours_max_bytes() -> None:
    corpus = Corpus(CorpusConfig(max_bytes=50_000))
    got = list(corpus)
    assert 0 < corpus.stats.bytes <= 50_000
    first_identity, first_path = corpus.files[0]
    assert got[0].identity == first_identity
    assert got[0].text == first_path.read_text(encoding="utf-8")


def test_two_passes_give_the_same_documents_and_fingerprint(docs_dir: Path) -> None:
    corpus = Corpus(CorpusConfig(paths=[str(docs_dir)]))
    first = list(corpus)
    sha = corpus.stats.sha256
    assert list(corpus) == first and corpus.stats.sha256 == sha and len(sha) == 64


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"format": "stdlib", "paths": ["x"]}, "takes no paths"),
        ({"format": "jsonl"}, "needs at least one path"),
        ({"paths": ["x"], "format": "text", "text_field": "body"}, "text_field applies"),
        ({"paths": ["x"], "format": "jsonl", "doc_bytes": 10}, "doc_bytes applies"),
        ({"max_bytes": 0}, "max_bytes"),
        ({"format": "csv"}, "format"),
    ],
)
def test_bad_corpus_config_is_a_validation_error_naming_the_field(
    fields: dict, field_name: str
) -> None:
    with pytest.raises(ValidationError, match=field_name):
        CorpusConfig(**fields)


@pytest.mark.parametrize(
    "fields",
    [{"format": "stdlib"}, {"paths": ["x"], "format": "jsonl"}, {"paths": ["x"], "format": "text"}],
)
def test_a_dumped_corpus_config_validates_again(fields: dict) -> None:
    """Configs travel as JSON (Prefect parameters, bringup.json): defaults must round-trip."""
    config = CorpusConfig(**fields)
    assert CorpusConfig.model_validate_json(config.model_dump_json()) == config

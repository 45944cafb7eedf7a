"""Shared pytest setup.

- The `gpu` marker skips itself when CUDA is absent.
- One thread per process; the longest modules are scheduled first (see README.md).
- One random seed per session, the same in every xdist worker, printed in the header
  (`random seed: N`); `TTT_TEST_SEED=N` repeats it. Hypothesis draws from it (unless
  `--hypothesis-seed` is given) and tests that place something at random take the `rng`
  fixture, seeded from it and the test's id.
- Session fixtures for the stages' tests (see tests/README.md): `debug_tiny_data`, the
  tokenizer and shards of the flows `debug_tiny` preset, built once per session.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

SEED_ENV = "TTT_TEST_SEED"

# One thread per process, here and in every process a test starts: the xdist workers share the
# cores (with more, their OpenMP threads spin against each other, up to 50x slower), and a run
# in this process computes bit for bit what the same run computes in a trainer subprocess.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    worker_input = getattr(config, "workerinput", None)  # set in an xdist worker
    if worker_input is not None:
        seed = worker_input[SEED_ENV]
    else:
        seed = int(os.environ.get(SEED_ENV) or random.randrange(2**32))
    config.stash[_SEED] = seed
    if getattr(config.option, "hypothesis_seed", "absent") is None:
        config.option.hypothesis_seed = seed  # read by Hypothesis' own pytest_configure


_SEED = pytest.StashKey[int]()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist: every worker draws from the session's one seed."""
    node.workerinput[SEED_ENV] = node.config.stash[_SEED]


def pytest_report_header(config: pytest.Config) -> str:
    seed = config.stash[_SEED]
    return f"random seed: {seed} (repeat with {SEED_ENV}={seed}; Hypothesis uses it too)"


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A generator seeded from the session seed and this test's id (printed with the test)."""
    seed = request.config.stash[_SEED]
    print(f"rng: session seed {seed}, test {request.node.nodeid}")
    return random.Random(f"{seed}:{request.node.nodeid}")


# The longest modules (measured with --durations, see README.md), started first: with one module
# per xdist worker at a time, the other workers get through the short ones meanwhile instead of
# one of them starting a 3-minute module near the end.
LONGEST_FIRST = ("flows/test_served_e2e.py", "train_stage/test_training.py")


def pytest_collection_modifyitems(config, items):
    tests = Path(__file__).parent
    if missing := [name for name in LONGEST_FIRST if not (tests / name).is_file()]:
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FIRST names no module: {missing}")
    rank = {str(tests / name): i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(str(item.path), len(rank)))  # stable: others keep order
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA; no GPU visible")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


class TinyData(NamedTuple):
    tokenizer: Path  # a tokenizer dir (tokenizer.model, tokenizer.json)
    shards: Path  # a shard dir: manifest.json, train and val splits


@pytest.fixture(scope="session")
def debug_tiny_data(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    """The data of the flows `debug_tiny` preset (1 MB of the embedded stdlib corpus, a
    512-token SentencePiece model, rows of 65 ids, 10% validation), built once per session.
    Read-only: a test that changes files copies them first."""
    from data_stage import CorpusConfig, ShardConfig, TokenizerConfig, build_shards, train_tokenizer

    corpus = CorpusConfig(format="stdlib", max_bytes=1_000_000)
    root = tmp_path_factory.mktemp("debug_tiny_data")
    train_tokenizer(TokenizerConfig(corpus=corpus, out=root / "tok", vocab_size=512))
    shards = ShardConfig(corpus=corpus, tokenizer=root / "tok", seq_len=64, out=root / "shards",
                         val_fraction=0.1, workers=2)  # fmt: skip
    build_shards(shards)
    return TinyData(root / "tok", root / "shards")

"""The fuzz suite at a small budget (``make fuzz`` runs it for minutes, coverage-guided).

Every decoder and framer takes any bytes and raises only its documented error: the
corpus seeds first, then a few hundred generated inputs per target (random bytes,
mutated seeds, generated gateway.toml). No timing here: ``make fuzz`` checks speed.
"""

from __future__ import annotations

import functools
import logging
import tomllib
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.seed import CORPUS, EDGES, read_corpus
from tests.fuzz.strategies import gateway_toml, inputs, toml_text
from tests.fuzz.targets import TARGETS, budget, check

NAMES = sorted(TARGETS)


@functools.cache
def _inputs(name: str) -> st.SearchStrategy[bytes]:
    return inputs(name, read_corpus(name), TARGETS[name].max_len)


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    # ReplaySource logs each bad capture file; thousands of lines would only slow the run.
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("name", NAMES)
def test_corpus_seeds(name: str) -> None:
    paths = sorted((CORPUS / name).iterdir())
    assert paths, f"tests/fuzz/corpus/{name} is empty: run python -m tests.fuzz.seed"
    for path in paths:
        try:
            check(TARGETS[name], path.read_bytes())
        except BaseException as exc:
            exc.add_note(f"input: {path.relative_to(CORPUS.parent)}")
            raise


@pytest.mark.parametrize(
    ("name", "seed"),
    [
        (target, seed)
        for target, edges in EDGES.items()
        for seed in edges
        if seed.startswith("finding")
    ],
)
def test_past_findings(name: str, seed: str) -> None:
    """What the fuzzers found once (also in the corpus; named here for a readable failure)."""
    check(TARGETS[name], EDGES[name][seed])


@pytest.mark.parametrize("name", NAMES)
@settings(
    max_examples=200, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(data=st.data())
def test_any_input(name: str, data: st.DataObject) -> None:
    check(TARGETS[name], data.draw(_inputs(name), label="input"))


@settings(max_examples=50)
@given(gateway_toml)
def test_generated_gateway_toml_is_valid_toml(document: dict[str, object]) -> None:
    """The generator writes real TOML, so the config target reaches the loader's checks."""
    text = toml_text(document)
    assert tomllib.loads(text).keys() == document.keys()


def test_the_time_budget() -> None:
    assert budget(0) == budget(1024) == 0.050
    assert budget(10 * 1024) == pytest.approx(0.100)

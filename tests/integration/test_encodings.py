"""Data messages in both encodings against a real Mosquitto (issue 13 point 3): the MQTT 5
content type says which; the CBOR packs, read with cbor2, hold the readings the JSON packs of
an identical agent hold."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import cbor2
import pytest

from citygate.senml import resolve
from tests.faults.helpers import make_agent, running, synthetic_config, until
from tests.support.broker import DataCatcher, Mosquitto

pytestmark = pytest.mark.broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


def plain(value: object) -> object:
    return float(value) if isinstance(value, Decimal) else value


@pytest.mark.parametrize("encoding", ["json", "cbor"])
async def test_data_messages_carry_their_content_type_and_decode(
    tmp_path: Path, broker: Mosquitto, encoding: str
) -> None:
    catcher = DataCatcher(broker.port)
    config = synthetic_config(tmp_path, broker.port, devices=2, values=4, encoding=encoding)
    try:
        async with running(make_agent(config)):
            await until(lambda: len(catcher.snapshot()) >= 10, 30, "data messages")
    finally:
        catcher.stop()
    decode = cbor2.loads if encoding == "cbor" else json.loads
    seqs: list[int] = []
    for topic, payload, content_type in catcher.snapshot():
        assert content_type == f"application/senml+{encoding}"
        records = resolve(decode(payload))
        device = topic.split("/")[2]
        for record in records:
            assert str(record["n"]).startswith(f"gw-faults/{device}/")
            assert isinstance(plain(record["v"]), float | int)
            assert record["u"] is not None  # the synthetic values all have a unit
        seqs.extend(int(r["seq"]) for r in records if r["n"] == f"gw-faults/{device}/value_0")  # type: ignore[call-overload]
    assert len(seqs) == len(set(seqs)) >= 10


async def test_cbor_is_the_json_pack_reading_by_reading(tmp_path: Path, broker: Mosquitto) -> None:
    """Two agents, one per encoding, on the same synthetic devices: every sample of the one is
    the sample of the other, value for value (the synthetic values depend on seq and index)."""
    by_encoding: dict[str, dict[tuple[str, str], object]] = {}
    for encoding in ("json", "cbor"):
        catcher = DataCatcher(broker.port)
        workdir = tmp_path / encoding
        workdir.mkdir()
        config = synthetic_config(workdir, broker.port, devices=1, values=6, encoding=encoding)
        try:
            async with running(make_agent(config)):
                await until(lambda c=catcher: len(c.snapshot()) >= 5, 30, "data messages")
        finally:
            catcher.stop()
        decode = cbor2.loads if encoding == "cbor" else json.loads
        by_encoding[encoding] = {
            (str(r["n"]), str(r["u"])): plain(r["v"])
            for _, payload, _ in catcher.snapshot()
            for r in resolve(decode(payload))
            if r["seq"] == 1
        }
    assert by_encoding["json"] and by_encoding["json"] == by_encoding["cbor"]

"""Checks of Modbus TCP replies, from bytes written by hand from the spec."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from citygate.drivers.modbus.frame import ReadRequestFrame, check_reply, parse_read_request

# MBAP: tid 0x0007, protocol 0, length 6, unit 3; PDU: FC 04, address 0x0000, count 2
REQUEST = bytes.fromhex("0007 0000 0006 03 04 0000 0002")
READ = ReadRequestFrame(transaction_id=7, unit=3, function=4, address=0, count=2)
# the reply of vectors/modbus M1 (230.2 V) in a TCP frame
GOOD = bytes.fromhex("0007 0000 0007 03 04 04 43663334")


def test_parse_read_request() -> None:
    assert parse_read_request(REQUEST) == READ
    assert READ.reply_data_bytes == 4
    coils = parse_read_request(bytes.fromhex("0001 0000 0006 01 01 0013 0013"))
    assert coils is not None
    assert coils.reply_data_bytes == 3  # 19 coils: 3 bytes (spec example 6.1)
    assert parse_read_request(bytes.fromhex("0001 0000 0006 01 10 0013 0013")) is None
    assert parse_read_request(bytes.fromhex("0001 0001 0006 01 04 0013 0013")) is None
    assert parse_read_request(b"\x00\x01") is None


def test_good_replies_pass() -> None:
    assert check_reply(GOOD, READ) is None
    # exception 02 to FC 04 (vectors/modbus M6's PDU: 84 02)
    assert check_reply(bytes.fromhex("0007 0000 0003 03 84 02"), READ) is None


def test_incomplete_replies_wait_for_more() -> None:
    for end in range(len(GOOD)):
        assert check_reply(GOOD[:end], READ) is None


def test_late_replies_to_other_transactions_are_skipped() -> None:
    stale = bytes.fromhex("0006 0000 0007 03 04 04 00000000")
    assert check_reply(stale, READ) is None
    assert check_reply(stale + GOOD, READ) is None
    assert check_reply(stale + bytes.fromhex("0007 0000 0005 03 04 02 4366"), READ) is not None


def test_malformed_replies_say_what_is_wrong() -> None:
    cases = {
        "0007 0001 0007 03 04 04 43663334": "protocol id 1",
        "0007 0000 0001 03": "frame length 1",
        "0007 0000 0007 05 04 04 43663334": "from unit 5, expected unit 3",
        "0007 0000 0007 03 03 04 43663334": "function code 3, expected 4",
        "0007 0000 0005 03 04 02 4366": "carries 2 data bytes, expected 4",
        "0007 0000 0007 03 04 06 43663334": "carries 6 data bytes",
        "0007 0000 0009 03 04 04 4366333400 00": "holds 6 data bytes but says 4",
        "0007 0000 0004 03 84 02 00": "exception reply of 3 bytes",
        "0007 0000 0002 03 04": "without a byte count",
    }
    for frame, problem in cases.items():
        found = check_reply(bytes.fromhex(frame), READ)
        assert found is not None, frame
        assert problem in found, (frame, found)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300), function=st.sampled_from([1, 2, 3, 4]))
def test_any_bytes_give_a_verdict_never_an_exception(data: bytes, function: int) -> None:
    result = check_reply(data, ReadRequestFrame(1, 1, function, 0, 10))
    assert result is None or isinstance(result, str)
    parse_read_request(data)


def test_unit_zero_accepts_a_reply_from_any_unit() -> None:
    request = ReadRequestFrame(transaction_id=7, unit=0, function=4, address=0, count=2)
    assert check_reply(GOOD, request) is None

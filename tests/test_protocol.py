"""protocol.py and confirms.py: framing, exact reads, validation (pure, no sockets)."""

import json

import pytest

from tcpchatd.wire import protocol
from tcpchatd.wire.confirms import take_confirms
from tcpchatd.wire.errors import ProtocolError


def test_encode_header_is_ten_bytes_left_aligned():
    data = protocol.encode({"type": "confirm", "uuid": "x"})
    body = b'{"type":"confirm","uuid":"x"}'
    assert data == f"{len(body):<10}".encode() + body


@pytest.mark.parametrize("header,length", [
    (b"42        ", 42), (b"        42", 42), (b"   42     ", 42), (b"0000000007", 7)])
def test_header_digits_padded_with_spaces(header, length):
    assert protocol.parse_header(header) == length


@pytest.mark.parametrize("header", [
    b"          ", b"+42       ", b"-42       ", b"4_2       ", b"4 2       ",
    b"\t42       ", b"abc       ", b"42\n       ", "４２        ".encode()[:10]])
def test_bad_headers(header):
    with pytest.raises(ProtocolError) as info:
        protocol.parse_header(header)
    assert info.value.code == "bad_header" and info.value.fatal


def _reader(chunks):
    chunks = list(chunks)
    return protocol.FrameReader(lambda n: chunks.pop(0) if chunks else b"")


def test_frame_split_byte_by_byte_is_reassembled():
    data = protocol.encode({"a": 1}) + protocol.encode({"b": "ü"})
    reader = _reader([data[i:i + 1] for i in range(len(data))])
    assert json.loads(reader.next_body(100)) == {"a": 1}
    assert json.loads(reader.next_body(100)) == {"b": "ü"}
    assert reader.next_body(100) is None


def test_several_frames_in_one_segment_are_split():
    frames = [protocol.encode({"n": i}) for i in range(5)]
    reader = _reader([b"".join(frames)])
    assert [json.loads(reader.next_body(100))["n"] for _ in range(5)] == list(range(5))


def test_initial_bytes_begin_the_stream():
    data = protocol.encode({"n": 1})
    reader = protocol.FrameReader(lambda n: b"", initial=data)
    assert json.loads(reader.next_body(100)) == {"n": 1}


def test_eof_inside_a_frame():
    data = protocol.encode({"n": 1})
    with pytest.raises(protocol.PeerClosedMidFrame):
        _reader([data[:-3]]).next_body(100)
    with pytest.raises(protocol.PeerClosedMidFrame):
        _reader([data[:4]]).next_body(100)


def test_oversized_frame():
    with pytest.raises(ProtocolError) as info:
        _reader([b"70000     "]).next_body(65536)
    assert info.value.code == "frame_too_large" and info.value.fatal


@pytest.mark.parametrize("body,code", [
    (b"\xff\xfe", "bad_utf8"), (b"{not json", "bad_json"), (b"[1,2]", "not_an_object"),
    (b'{"type":"hello"}', "unknown_type"), (b'{"message":"x"}', "unknown_type"),
    (b'{"type":"message","message":"x"}', "bad_uuid"),
    (b'{"type":"message","uuid":"nope","message":"x"}', "bad_uuid"),
    (b'{"type":"confirm","uuid":42}', "bad_uuid"),
])
def test_client_frame_errors(body, code):
    with pytest.raises(ProtocolError) as info:
        protocol.parse_client_frame(body, 4096)
    assert info.value.code == code and not info.value.fatal


def test_text_limit_counts_utf8_bytes():
    u = "0b7f5c8e-6a8e-4c55-9d43-3f7b5fd0c1a2"
    ok = json.dumps({"type": "message", "uuid": u, "message": "é" * 5}).encode()
    assert protocol.parse_client_frame(ok, 10).text == "é" * 5
    too_long = json.dumps({"type": "message", "uuid": u, "message": "é" * 6}).encode()
    with pytest.raises(ProtocolError) as info:
        protocol.parse_client_frame(too_long, 10)
    assert info.value.code == "text_too_long" and info.value.uuid == u


def test_lone_surrogate_in_text_is_bad_utf8():
    body = b'{"type":"message","uuid":"0b7f5c8e-6a8e-4c55-9d43-3f7b5fd0c1a2","message":"\\ud800"}'
    with pytest.raises(ProtocolError) as info:
        protocol.parse_client_frame(body, 100)
    assert info.value.code == "bad_utf8"


@pytest.mark.parametrize("data,nick,rest", [
    (b"alice", b"alice", b""), (b"alice\n", b"alice", b""), (b" bob \r\nXYZ", b"bob", b"XYZ"),
    (b"carol\n12        ", b"carol", b"12        ")])
def test_take_nickname(data, nick, rest):
    assert protocol.take_nickname(data) == (nick, rest)


def test_chat_frame_adds_prefix_only_when_missing():
    u = "0b7f5c8e-6a8e-4c55-9d43-3f7b5fd0c1a2"
    plain = json.loads(protocol.chat_frame(u, "ann", "hi")[10:])
    prefixed = json.loads(protocol.chat_frame(u, "ann", "ann: hi")[10:])
    spoofed = json.loads(protocol.chat_frame(u, "ann", "bob: hi")[10:])
    assert plain["message"] == prefixed["message"] == "ann: hi"
    assert spoofed["message"] == "ann: bob: hi"
    assert plain["nickname"] == "ann" and plain["time"].endswith("Z")


@pytest.mark.parametrize("body", [
    b'{"type":"confirm","uuid":"0b7f5c8e-6a8e-4c55-9d43-3f7b5fd0c1a2"}',
    b'{"type": "confirm", "uuid": "0b7f5c8e-6a8e-4c55-9d43-3f7b5fd0c1a2"}',
    b'{"uuid":"0b7f5c8e-6a8e-4c55-9d43-3f7b5fd0c1a2","type":"confirm"}',
    b' {"type":"confirm","uuid":"0B7F5C8E-6A8E-4C55-9D43-3F7B5FD0C1A2"} ',
])
def test_confirms_in_any_json_spelling(body):
    confirm = protocol.parse_client_frame(body, 10)
    assert isinstance(confirm, protocol.Confirm)
    assert confirm.uuid == "0b7f5c8e-6a8e-4c55-9d43-3f7b5fd0c1a2"


BASE = "0b7f5c8e-6a8e-4c55-9d43-3f7b5fd0c1a2"


@pytest.mark.parametrize("spelling", [
    "{" + BASE + "}", "urn:uuid:" + BASE, "urn:urn:uuid:" + BASE, BASE.replace("-", ""),
    "0b7f5c8e6-a8e-4c55-9d43-3f7b5fd0c1a2", "+" + BASE[1:], BASE[:-1] + "_",
    "\\n" + BASE, BASE[:-1] + "\u0662", BASE[:-1] + "\uff12", BASE + " ", BASE[:-1],
    "0b7f5c8e_6a8e_4c55_9d43_3f7b5fd0c1a2"])
def test_only_the_canonical_uuid_form_is_accepted(spelling):
    for kind in ("message", "confirm"):
        body = ('{"type":"%s","uuid":"%s","message":"x"}' % (kind, spelling)).encode()
        with pytest.raises(ProtocolError) as info:
            protocol.parse_client_frame(body, 100)
        assert info.value.code == "bad_uuid"


def test_an_upper_case_uuid_is_normalised_to_lower_case():
    body = ('{"type":"message","uuid":"%s","message":"x"}' % BASE.upper()).encode()
    assert protocol.parse_client_frame(body, 100).uuid == BASE


def _nested(depth: int) -> bytes:
    return (b'{"type":"message","uuid":"%s","message":"x","x":' % BASE.encode()
            + b"[" * depth + b"1" + b"]" * depth + b"}")


def test_json_nested_deeper_than_the_bound_is_bad_json_before_parsing():
    deep = _nested(10_000)
    assert len(deep) < 65536  # under max_frame, like the probe's 20,087 bytes
    with pytest.raises(ProtocolError) as info:
        protocol.parse_client_frame(deep, 100)
    assert info.value.code == "bad_json" and "nested deeper" in info.value.message
    # up to the bound it parses; brackets inside strings do not count
    assert protocol.parse_client_frame(_nested(protocol.MAX_JSON_DEPTH - 1), 100).text == "x"
    text = '{"type":"message","uuid":"%s","message":"%s"}' % (BASE, "[{" * 500)
    assert protocol.parse_client_frame(text.encode(), 4096).text == "[{" * 500
    escaped = r'{"type":"message","uuid":"%s","message":"\\\"[[[["}' % BASE
    assert protocol.decode(escaped.encode(), max_depth=2)["message"] == '\\"[[[['  # \" then [[[[


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json(constant):
    with pytest.raises(ProtocolError) as info:
        protocol.decode(b'{"type":"confirm","x":' + constant + b"}")
    assert info.value.code == "bad_json"


@pytest.mark.parametrize("body,code", [
    (b'{"type":"confirm","uuid":"0b7f5c8e-6a8e-4c55-9d43-3f7b5fd0c1aZ"}', "bad_uuid"),
    (b'{"type":"confirm","uuid":"0b7f5c8e-6a8e-4c55-9d43-3f7b5fd0c1a2"', "bad_json"),
    (b'{"type":"confirm","uuid":"0b7f5c8e6a8e4c559d433f7b5fd0c1a2"}', "bad_uuid"),
])
def test_near_miss_confirms_take_the_full_path(body, code):
    with pytest.raises(ProtocolError) as info:
        protocol.parse_client_frame(body, 10)
    assert info.value.code == code


U = "0b7f5c8e-6a8e-4c55-9d43-3f7b5fd0c1a2"


def _confirm_frame(header_text: str, spaced: bool = False) -> bytes:
    sep = ", " if spaced else ","
    colon = ": " if spaced else ":"
    body = f'{{"type"{colon}"confirm"{sep}"uuid"{colon}"{U}"}}'.encode()
    return header_text.format(len(body)).encode() + body


def test_confirms_in_a_row_are_taken_in_bulk_and_the_rest_is_left():
    uuids = [f"{i:08d}-6a8e-4c55-9d43-3f7b5fd0c1a2" for i in range(3)]
    run = b"".join(protocol.encode({"type": "confirm", "uuid": u}) for u in uuids)
    after = protocol.encode({"type": "message", "uuid": U, "message": "x"})
    reader = protocol.FrameReader(lambda n: b"", initial=run + after + run)
    assert take_confirms(reader) == uuids
    # a frame of another type (a sender's own chat message) stops the run; next_body
    # reads it, then the run goes on
    assert take_confirms(reader) == []
    assert json.loads(reader.next_body(1000))["type"] == "message"
    assert take_confirms(reader) == uuids
    assert reader.next_body(1000) is None


@pytest.mark.parametrize("data", [
    _confirm_frame("{:<10}"), _confirm_frame("{:>10}"), _confirm_frame("{:^10}"),
    _confirm_frame("{:<10}", spaced=True)])
def test_bulk_confirms_accept_what_the_frame_reader_accepts(data):
    reader = protocol.FrameReader(lambda n: b"", initial=data * 2)
    assert take_confirms(reader) == [U, U]


def test_anything_else_is_left_for_the_frame_by_frame_path():
    compact = _confirm_frame("{:<10}")
    body = compact[10:]
    # not all there yet: nothing taken, nothing lost
    reader = protocol.FrameReader(lambda n: b"", initial=compact[:-1])
    assert take_confirms(reader) == [] and not reader.has_frame()
    # zero-padded digits: valid, read by the frame-by-frame path
    reader = protocol.FrameReader(lambda n: b"", initial=b"%010d" % len(body) + body)
    assert take_confirms(reader) == [] and reader.next_body(1000) == body
    # a header that does not say this body's length: the stream is read as it says
    reader = protocol.FrameReader(lambda n: b"", initial=b"%-10d" % (len(body) - 1) + body)
    assert take_confirms(reader) == [] and reader.next_body(1000) == body[:-1]
    # a sign in the header: bad_header, as always
    reader = protocol.FrameReader(lambda n: b"", initial=b"+%-9d" % len(body) + body)
    assert take_confirms(reader) == []
    with pytest.raises(ProtocolError) as info:
        reader.next_body(1000)
    assert info.value.code == "bad_header"


@pytest.mark.parametrize("spaced", [False, True])
def test_a_buffer_of_confirms_is_taken_whole_and_a_partial_frame_stays(spaced):
    uuids = [f"{i:08d}-6a8e-4c55-9d43-3f7b5fd0c1a{i % 10}" for i in range(50)]
    sep, colon = (", ", ": ") if spaced else (",", ":")
    frames = [f'{{"type"{colon}"confirm"{sep}"uuid"{colon}"{u}"}}'.encode() for u in uuids]
    data = b"".join(b"%-10d" % len(f) + f for f in frames)
    reader = protocol.FrameReader(lambda n: b"", initial=data + data[:30])
    assert take_confirms(reader) == uuids
    assert not reader.has_frame() and take_confirms(reader) == []


@pytest.mark.parametrize("spaced", [False, True])
@pytest.mark.parametrize("change", [
    ("6a8e", "6x8e"),            # an x where a hex digit belongs (the mask's own letter)
    ('"confirm"', '"aonfirm"'),  # a hex digit of the frame itself changed for another
    ("-4c55-", "-4c55x"),        # a dash where a dash belongs, replaced
])
def test_a_buffer_of_confirms_with_one_frame_spelt_wrong_is_not_taken_whole(spaced, change):
    uuids = [f"{i:08d}-6a8e-4c55-9d43-3f7b5fd0c1a{i % 10}" for i in range(20)]
    sep, colon = (", ", ": ") if spaced else (",", ":")
    frames = [f'{{"type"{colon}"confirm"{sep}"uuid"{colon}"{u}"}}' for u in uuids]
    frames[7] = frames[7].replace(*change, 1)
    assert frames[7] != frames[6].replace(uuids[6], uuids[7])
    data = b"".join(b"%-10d" % len(f) + f.encode() for f in frames)
    reader = protocol.FrameReader(lambda n: b"", initial=data)
    assert take_confirms(reader) == uuids[:7]  # the regex path stops at the bad one
    if change[1] == '"aonfirm"':  # not a confirm: the frame-by-frame path says why
        with pytest.raises(ProtocolError):
            protocol.parse_client_frame(reader.next_body(1000), 4096)
    else:
        with pytest.raises(ProtocolError) as info:
            protocol.parse_client_frame(reader.next_body(1000), 4096)
        assert info.value.code == "bad_uuid"


@pytest.mark.parametrize("bad", [
    "0b7f5c8e-6a8e-4c55-9d43-3f7b5fd0c1aZ",     # not hex
    "0b7f5c8e-6a8e-4c55-9d43-3f7b5fd0c1a",      # short ...
    "0b7f5c8e6-a8e-4c55-9d43-3f7b5fd0c1a22",    # ... and long, with dashes moved
])
def test_a_bad_uuid_in_a_buffer_of_confirms_stops_the_run_there(bad):
    good = ["0b7f5c8e-6a8e-4c55-9d43-3f7b5fd0c1a2"] * 3
    frames = [protocol.encode({"type": "confirm", "uuid": u}) for u in good[:2] + [bad]]
    reader = protocol.FrameReader(lambda n: b"", initial=b"".join(frames))
    assert take_confirms(reader) == good[:2]
    with pytest.raises(ProtocolError) as info:
        protocol.parse_client_frame(reader.next_body(1000), 10)
    assert info.value.code == "bad_uuid"


@pytest.mark.parametrize("spaced", [False, True])
@pytest.mark.parametrize("change", [
    None,                        # taken by the one-frame check
    ("6a8e", "6A8E"),            # upper-case hex: not CONFIRM_BODY's; the full path
    ("6a8e", "6x8e"),            # not hex
    ('"}', "\"'"),               # the frame's end changed, its length kept
    ('"uuid"', '"uuiD"'),        # another key, same length
])
def test_a_buffer_of_one_confirm_takes_what_the_frame_reader_would(spaced, change):
    """A reader's every read at a few messages a second is one confirm frame: the
    one-frame check takes it, and anything else of the same length is left as it was."""
    sep, colon = (", ", ": ") if spaced else (",", ":")
    frame = f'{{"type"{colon}"confirm"{sep}"uuid"{colon}"{U}"}}'
    if change is not None:
        frame = frame.replace(*change, 1)
    data = b"%-10d" % len(frame) + frame.encode()
    assert len(data) == (77 if spaced else 74)  # the size the one-frame check looks at
    reader = protocol.FrameReader(lambda n: b"", initial=data)
    if change is None:
        assert take_confirms(reader) == [U] and not reader.has_frame()
        return
    assert take_confirms(reader) == []
    assert reader.next_body(1000) == frame.encode()  # left whole for the full path

"""Confirm frames recognised in bulk: the hot path of a busy room; pure, no sockets.

Every delivery comes back as one confirm frame, so the event loop of a busy room
reads little else, and dozens at a time. Recognising them without a JSON parse, a dict
or a UUID object, a whole buffer at once where it can, is what keeps a delivery within
a few µs of CPU (BENCHMARKS.md). Anything that is not a well-formed confirm frame, or
that is written in another way, is left in the buffer for FrameReader.take_body and
protocol.parse_client_frame, which give it exactly what they always did.
"""

from __future__ import annotations

import re

from .protocol import CANONICAL_UUID, CONFIRM_BODY, HEADER_LENGTH, FrameReader

# A whole confirm frame, header included, for take_confirms: under load a
# reader finds dozens of them in one read, and matching them in a row costs a fraction of
# a frame-by-frame parse (measured: 4 µs a frame down to well under 1).
_CONFIRM_FRAME = re.compile(rb'([ 0-9]{10})(' + CONFIRM_BODY + rb')')


def _confirm_headers() -> dict[bytes, int]:
    """Every header a confirm frame of the fast path may carry: its 10 bytes -> length."""
    headers = {}
    for length in range(64, 68):  # the body with none to all three optional spaces
        digits = b"%d" % length
        for lead in range(HEADER_LENGTH - len(digits) + 1):
            headers[(b" " * lead + digits).ljust(HEADER_LENGTH)] = length
    return headers


_CONFIRM_HEADERS = _confirm_headers()
_HEX = b"0123456789abcdef"  # lower case only (see CONFIRM_BODY)
_HEX_TO_X = bytes.maketrans(_HEX, b"x" * len(_HEX))
_UUID_SHAPE = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
# a uuid as CONFIRM_BODY has it, and the end of the frame after it
_UUID_TO_END = re.compile(CANONICAL_UUID + rb'"\}')


class _ConfirmSpelling:
    """Whole buffers of confirm frames spelt one way, checked and split in a few C calls.

    Under load a reader finds dozens of confirms in one read, all written by the same
    client code, so all of one size. Three checks of the whole run against the frame
    repeated, none of them a Python step per frame: with every hex digit masked as `x`,
    it is the frame with its uuid masked, repeated (each byte of its kind, where it
    belongs); with every hex digit deleted, it is the frame's other bytes, repeated (no
    `x` stood in a uuid); and the frame's own hex digits (its header's length, the c of
    "confirm") each compared at their place in every frame, a stride apart. Then the
    uuids are sliced out of the decoded run. Anything else (a mixed buffer, another
    spacing, a bad uuid) is left to the regex path.
    """

    def __init__(self, colon: str, comma: str) -> None:
        body = f'{{"type"{colon}"confirm"{comma}"uuid"{colon}"{_UUID_SHAPE}"}}'
        frame = f"{len(body):<{HEADER_LENGTH}}{body}".encode("ascii")
        self.size = len(frame)
        self.uuid_at = frame.index(_UUID_SHAPE.encode("ascii"))
        self.prefix = frame[:self.uuid_at]  # header and body up to the uuid (take_one)
        self.masked = frame.translate(_HEX_TO_X)
        self.stripped = frame.translate(None, _HEX + b"x")
        self.exact = [(at, frame[at:at + 1]) for at in range(len(frame))
                      if frame[at] in _HEX]  # outside the uuid, which is all x here

    def take_all(self, buf: bytearray) -> list[str] | None:
        size = self.size
        count = len(buf) // size
        # a sender's reader finds its own chat messages among the confirms: the run of
        # confirms ends before the first one, whose type value starts 18 or 19 bytes in
        message = buf.find(b'"message"')
        if message >= 0:
            count = min(count, max(0, message - 18) // size)
        if count < 2:
            return None  # one frame: the regex path is as cheap
        end = count * size
        run = buf[:end]
        if (run.translate(_HEX_TO_X) != self.masked * count
                or run.translate(None, _HEX) != self.stripped * count):
            return None
        for at, byte in self.exact:
            if run[at::size] != byte * count:
                return None
        text = run.decode("ascii")  # (every byte matched an ASCII one above)
        uuids = [text[at:at + 36] for at in range(self.uuid_at, end, size)]
        del buf[:end]
        return uuids

    def take_one(self, buf: bytearray) -> list[str] | None:
        """A buffer of exactly one frame spelt this way (a reader's every read at a few
        messages a second): three C calls, where the regex path is twice the time."""
        at = self.uuid_at
        if buf.startswith(self.prefix) and _UUID_TO_END.fullmatch(buf, at):
            frame_uuid = buf[at:at + 36].decode("ascii")
            buf.clear()
            return [frame_uuid]
        return None


# ours (compact) and the original client's (json.dumps' default spaces), with the
# header as both write it
_CONFIRM_SPELLINGS = (_ConfirmSpelling(":", ","), _ConfirmSpelling(": ", ", "))
_ONE_FRAME = {spelling.size: spelling for spelling in _CONFIRM_SPELLINGS}
_RUN_AT_LEAST = 2 * min(spelling.size for spelling in _CONFIRM_SPELLINGS)


def take_confirms(reader: FrameReader) -> list[str]:
    """The uuids of the well-formed confirm frames at the head of the buffer, taken out.

    Only what is already buffered; never reads. A frame that is anything else (or a
    confirm written another way) stops the run and is left for next_body.
    """
    buf = reader.buffer
    # one frame of a known spelling, or a run of two or more; anything else (one frame
    # spelt another way, a mixed run) is the regex path's
    one = _ONE_FRAME.get(len(buf))
    if one is not None:
        uuids = one.take_one(buf)
        if uuids:
            return uuids
    elif len(buf) >= _RUN_AT_LEAST:
        for spelling in _CONFIRM_SPELLINGS:  # the common case: the buffer holds one kind
            uuids = spelling.take_all(buf)
            if uuids:
                return uuids
    pos, uuids = 0, []
    match, headers = _CONFIRM_FRAME.match, _CONFIRM_HEADERS
    while True:
        found = match(buf, pos)
        if found is None:
            break
        header, body, frame_uuid = found.group(1, 2, 3)
        if headers.get(header) != len(body):  # the header must say this body's length
            break
        uuids.append(frame_uuid.decode("ascii"))
        pos += HEADER_LENGTH + len(body)
    if pos:
        del buf[:pos]
    return uuids

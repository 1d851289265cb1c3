"""The web listener's door: one HTTP request, read until whole, and what answers it.

A plain GET is answered with a file of the bundled page (tcpchatd/web: HTML, CSS and
JavaScript, nothing fetched from elsewhere) and the connection closes; a WebSocket
Upgrade whose Origin is allowed is accepted, and the connection goes on as a WebSocket
(websocket.py). HTTP is parsed by h11 and the WebSocket handshake made by wsproto's
H11Handshake, both Sans-I/O: this module never touches a socket, the transport feeds it.

The Origin check is what keeps a page of another site from opening a WebSocket in a
visitor's browser to this daemon (a browser always sends Origin on a WebSocket; a client
that is no browser, such as a script, sends none and is let in): the page's own origin
(the scheme of this listener and the Host the browser asked for) and the origins
listed in `web_origins` (a reverse proxy's public address, say).
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from typing import Any

MAX_REQUEST = 16 * 1024  # bytes of a request's line and headers (a browser's are ~1 KiB)

# Only the page's own script and style; no inline script, no plugin, no frame of it
# elsewhere; WebSocket connections to its own origin alone ('self' covers ws: and wss:).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'")
PAGE_FILES = {  # path -> (file in tcpchatd/web, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 426: "Upgrade Required",
           431: "Request Header Fields Too Large"}

_pages: dict[str, bytes] = {}


def page_file(name: str) -> bytes:
    """A file of the bundled page, read once."""
    data = _pages.get(name)
    if data is None:
        data = _pages[name] = importlib.resources.files("tcpchatd.web").joinpath(
            name).read_bytes()
    return data


def origin_allowed(origin: str | None, host: str | None, secure: bool,
                   allowed: tuple[str, ...]) -> bool:
    """May a WebSocket with this Origin header open (see the module's docstring)?"""
    if origin is None:
        return True
    origin = origin.lower().rstrip("/")
    if origin in (o.lower().rstrip("/") for o in allowed):
        return True
    scheme = "https" if secure else "http"
    return host is not None and origin == f"{scheme}://{host.lower()}"


@dataclass
class Outcome:
    """What the door decided: bytes to send, then either a WebSocket (`websocket`, the
    wsproto connection that goes on) or the close; and the fields of its log line."""
    reply: bytes
    websocket: Any = None  # wsproto.connection.Connection once upgraded
    status: int = 0
    method: str = ""
    path: str = ""
    origin: str | None = None


class HttpDoor:
    """One connection's request: feed() what comes until it gives an Outcome."""

    def __init__(self, secure: bool, origins: tuple[str, ...]) -> None:
        import h11  # only where a web listener is served (the `web` extra)
        self._h11 = h11
        self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
        self._secure = secure
        self._origins = origins
        self._raw = bytearray()  # the request as it came: wsproto reads it again

    def feed(self, data: bytes) -> Outcome | None:
        """None while the request is not whole; then what to do."""
        h11 = self._h11
        self._raw += data
        self._http.receive_data(data)
        try:
            event = self._http.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint in REASONS else 400
            return self._refusal(status, "", "", f"{exc}\n")
        if event is h11.NEED_DATA:
            return None
        if not isinstance(event, h11.Request):  # the peer closed before asking
            return Outcome(b"")
        if len(self._raw) > MAX_REQUEST:  # came whole in one read: h11 did not bound it
            return self._refusal(431, "", "", "request header fields too large\n")
        method = event.method.decode("ascii", "replace")
        path = event.target.decode("ascii", "replace")
        headers = {name.decode("latin-1").lower(): value.decode("latin-1")
                   for name, value in event.headers}
        if "websocket" in headers.get("upgrade", "").lower():
            return self._upgrade(method, path, headers)
        if method not in ("GET", "HEAD"):
            return self._refusal(405, method, path, "only GET\n", [("Allow", "GET, HEAD")])
        page = PAGE_FILES.get(path.split("?", 1)[0])
        if page is None:
            return self._refusal(404, method, path, "not found\n")
        name, content_type = page
        body = page_file(name)
        return Outcome(self._response(200, body, content_type, head=method == "HEAD"),
                       status=200, method=method, path=path)

    def _upgrade(self, method: str, path: str, headers: dict[str, str]) -> Outcome:
        from wsproto import ConnectionType
        from wsproto.events import AcceptConnection, Request
        from wsproto.handshake import H11Handshake
        from wsproto.utilities import RemoteProtocolError
        origin = headers.get("origin")
        if not origin_allowed(origin, headers.get("host"), self._secure, self._origins):
            outcome = self._refusal(403, method, path, "this origin may not connect\n")
            outcome.origin = origin
            return outcome
        handshake = H11Handshake(ConnectionType.SERVER)
        try:
            handshake.receive_data(bytes(self._raw))
            requests = [e for e in handshake.events() if isinstance(e, Request)]
        except RemoteProtocolError as exc:
            return self._refusal(400, method, path, f"not a WebSocket handshake: {exc}\n")
        if not requests:
            return self._refusal(400, method, path, "not a WebSocket handshake\n")
        reply = handshake.send(AcceptConnection())  # no extension, no subprotocol
        connection = handshake.connection
        assert connection is not None  # accepted: the connection is open
        # what came after the request (a client that did not wait for the 101): wsproto's
        # server side leaves it out of the connection it makes
        connection.receive_data(self._http.trailing_data[0])
        return Outcome(reply, websocket=connection, status=101, method=method,
                       path=path, origin=origin)

    def _refusal(self, status: int, method: str, path: str, text: str,
                 headers: list[tuple[str, str]] | None = None) -> Outcome:
        return Outcome(self._response(status, text.encode(), "text/plain; charset=utf-8",
                                      headers), status=status, method=method, path=path)

    def _response(self, status: int, body: bytes, content_type: str,
                  headers: list[tuple[str, str]] | None = None, head: bool = False) -> bytes:
        h11 = self._h11
        fields = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                  ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
                  ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
                  ("Cache-Control", "no-cache"), ("Connection", "close"), *(headers or [])]
        try:
            head_bytes = self._http.send(h11.Response(status_code=status, headers=fields,
                                                      reason=REASONS.get(status, "")))
        except h11.LocalProtocolError:  # the request could not be parsed: h11 has no
            # state to answer from, so the response is written out (the same fields)
            lines = [f"HTTP/1.1 {status} {REASONS.get(status, '')}"] + [
                f"{name}: {value}" for name, value in fields]
            head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head_bytes + (b"" if head else body)

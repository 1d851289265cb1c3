"""TLS for the chat: the server's context, its certificate's expiry, a ClientHello sniffer.

The stdlib `ssl` module only, imported where TLS is served: a plaintext daemon never
loads it (4.6 MiB of memory). The context is made once at start and again on reload;
each connection is wrapped with the context current when it was accepted, and its
loop drives the non-blocking handshake (net/connection.py). A pair that does not load
raises TlsSetupError with one clear line, and the caller keeps what it had.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

# The first bytes of a TLS record carrying a handshake: content type 22, version 3.x.
# A client that opens TLS on the plaintext port sends them where a nickname belongs.
CLIENT_HELLO_START = b"\x16\x03"


class TlsSetupError(Exception):
    """The certificate or key cannot be used (one line, for the log and STATUS=)."""


def server_context(cert_path: str, key_path: str, min_version: str) -> ssl.SSLContext:
    """A server context for the chat's TLS port, or TlsSetupError."""
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = {"1.2": ssl.TLSVersion.TLSv1_2,
                               "1.3": ssl.TLSVersion.TLSv1_3}[min_version]
    context.options |= ssl.OP_NO_COMPRESSION
    for path in (cert_path, key_path):  # ssl's own errors do not name the file
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise TlsSetupError(f"cannot read {path}: {exc.strerror}") from None
    try:
        context.load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise TlsSetupError(f"certificate {cert_path} and key {key_path} do not load: "
                            f"{reason}") from None
    return context


def certificate_expiry(cert_path: str) -> datetime.datetime:
    """notAfter of the first certificate in a PEM file (read from its DER encoding:
    the stdlib decodes certificates only for peers)."""
    import ssl
    try:
        with open(cert_path, encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError as exc:
        raise TlsSetupError(f"cannot read {cert_path}: {exc.strerror}") from None
    # the first PEM block, wherever it starts: `openssl x509 -text` writes the
    # certificate's description before it (ssl loads such a file; so must this)
    start = text.find(ssl.PEM_HEADER)
    end = text.find(ssl.PEM_FOOTER, start)
    if start < 0 or end < 0:
        raise TlsSetupError(f"{cert_path} holds no PEM certificate")
    try:
        der = ssl.PEM_cert_to_DER_cert(text[start:end + len(ssl.PEM_FOOTER)])
        tbs = _children(der, _children(der, 0)[0][0])  # Certificate -> tbsCertificate
        first = 1 if der[tbs[0][0]] == 0xA0 else 0  # [0] version is optional
        validity = tbs[first + 3]  # after serialNumber, signature, issuer
        not_after = _children(der, validity[0])[1]
        return _asn1_time(der[not_after[0]], der[not_after[1]:not_after[2]])
    except (IndexError, ValueError, UnicodeError) as exc:  # base64, DER or time garbage
        raise TlsSetupError(f"{cert_path}: cannot read the certificate's expiry: "
                            f"{exc}") from None


def _children(der: bytes, element_at: int) -> list[tuple[int, int, int]]:
    """The DER elements inside the constructed element at `element_at`, each as
    (tag offset, content start, content end)."""
    _, start, end = _element(der, element_at)
    items, pos = [], start
    while pos < end:
        item = _element(der, pos)
        items.append(item)
        pos = item[2]
    return items


def _element(der: bytes, pos: int) -> tuple[int, int, int]:
    tag_at = pos
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(der[pos:pos + count], "big")
        pos += count
    if pos + length > len(der):
        raise ValueError("truncated DER")
    return tag_at, pos, pos + length


def _asn1_time(tag: int, value: bytes) -> datetime.datetime:
    text = value.decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ
        stamp = datetime.datetime.strptime(text, "%y%m%d%H%M%SZ")
    elif tag == 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        stamp = datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ")
    else:
        raise ValueError(f"unexpected time tag {tag:#x}")
    return stamp.replace(tzinfo=datetime.UTC)


class TlsCredentials:
    """The context new TLS connections are wrapped with; replaced on reload (the accept
    thread reads `context` once per connection: an attribute swap is all it needs)."""

    def __init__(self, cert_path: str, key_path: str, min_version: str) -> None:
        self.context, self.expires = self._load(cert_path, key_path, min_version)

    @staticmethod
    def _load(cert_path: str, key_path: str,
              min_version: str) -> tuple[ssl.SSLContext, datetime.datetime]:
        context = server_context(cert_path, key_path, min_version)
        return context, certificate_expiry(cert_path)

    def reload(self, cert_path: str, key_path: str, min_version: str) -> None:
        """Load a new pair for new handshakes; on TlsSetupError the old one stays."""
        self.context, self.expires = self._load(cert_path, key_path, min_version)

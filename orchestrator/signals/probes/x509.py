"""Just enough DER to read a certificate's ``notAfter``.

The standard library only decodes a peer certificate it has verified; a probe with
verification off still has to know when the certificate expires, and a full X.509 library
would be a new dependency for one field.
"""

from __future__ import annotations

import calendar
import time

_SEQUENCE = 0x30
_CONTEXT_0 = 0xA0
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18


def _element(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at ``pos``."""
    if pos + 2 > len(der):
        raise ValueError("truncated DER element")
    tag = der[pos]
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(der):
            raise ValueError("unsupported DER length")
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(der):
        raise ValueError("truncated DER element")
    return tag, pos, end


def _expect(der: bytes, pos: int, tag: int, what: str) -> tuple[int, int]:
    found, start, end = _element(der, pos)
    if found != tag:
        raise ValueError(f"expected {what} (tag {tag:#x}), found tag {found:#x}")
    return start, end


def _parse_time(tag: int, raw: bytes) -> float:
    text = raw.decode("ascii")
    if not text.endswith("Z"):
        raise ValueError(f"certificate time is not UTC: {text!r}")
    if tag == _UTC_TIME:
        # RFC 5280: two-digit years 50-99 are 19xx, 00-49 are 20xx.
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    parsed = time.strptime(text, "%Y%m%d%H%M%SZ")
    return float(calendar.timegm(parsed))


def not_after(der: bytes) -> float:
    """The certificate's ``notAfter`` as Unix seconds; ``ValueError`` when unreadable."""
    start, _ = _expect(der, 0, _SEQUENCE, "Certificate")
    pos, _ = _expect(der, start, _SEQUENCE, "TBSCertificate")
    tag, _, end = _element(der, pos)
    if tag == _CONTEXT_0:  # explicit version
        pos = end
    for _skipped in range(3):  # serialNumber, signature algorithm, issuer
        _, _, pos = _element(der, pos)
    validity, _ = _expect(der, pos, _SEQUENCE, "Validity")
    _, _, after_not_before = _element(der, validity)
    tag, start, end = _element(der, after_not_before)
    if tag not in (_UTC_TIME, _GENERALIZED_TIME):
        raise ValueError(f"notAfter has tag {tag:#x}, expected a time")
    return _parse_time(tag, der[start:end])

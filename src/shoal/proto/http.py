"""Sans-IO pieces of HTTP shared by the daemon's read endpoint and the gateways."""

from __future__ import annotations

import re

from shoal.errors import InvalidArgument

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=` range, or None to send the whole object.
    Raises InvalidArgument when the range cannot be satisfied (416)."""
    m = _RANGE.fullmatch(value.strip())
    if not m:
        return None  # multiple ranges or another unit: RFC 9110 lets us send it all
    a, b = m.groups()
    if not a and not b:
        return None
    if not a:  # the last b bytes
        n = int(b)
        if n == 0 or size == 0:
            raise InvalidArgument("unsatisfiable range")
        return max(0, size - n), size - 1
    first = int(a)
    last = min(int(b), size - 1) if b else size - 1
    if first >= size or (b and int(b) < first):
        raise InvalidArgument("unsatisfiable range")
    return first, last

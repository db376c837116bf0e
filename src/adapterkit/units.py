"""Sizes in bytes: reading them from the command line and writing them for people.

Shared by `plan --budget` and `compare --memory-limit`, so both read sizes the same way and an
unreadable one is reported under the option that gave it.
"""

from __future__ import annotations

import re

from adapterkit.errors import UserError

_DECIMAL = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}
_SIZE = re.compile(r"\s*([0-9.eE+]+)\s*([KMGT]?)(i?)B?\s*", flags=re.IGNORECASE)


def parse_size(text: str, what: str = "size") -> int:
    """'2GiB', '300MB', '512M', '1e9' -> bytes; KiB/MiB/GiB are binary, KB/MB/GB (and K/M/G) decimal.

    `what` names the option the text came from (`--budget`); a UserError under that name says
    what is wrong with it.
    """
    match = _SIZE.fullmatch(text)
    if not match:
        raise UserError(f"{what}: cannot read '{text}' as a size, e.g. 2GiB or 500MB")
    number, unit, binary = match.groups()
    try:
        value = float(number)
    except ValueError:
        raise UserError(f"{what}: cannot read '{text}' as a size") from None
    unit = unit.upper()
    scale = 1024 ** ("KMGT".index(unit) + 1) if binary and unit else _DECIMAL[unit]
    if value <= 0:
        raise UserError(f"{what}: must be positive, got '{text}'")
    return int(value * scale)


def human_bytes(n: float) -> str:
    """Bytes in the largest binary unit up to GiB: '512 B', '1.5 KiB', '2.0 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # not reached: GiB ends the loop


def mib(n: float | None) -> str:
    """Bytes as MiB with one decimal and thousands separators ('1,024.0'); '' for None."""
    return "" if n is None else f"{n / 2**20:,.1f}"

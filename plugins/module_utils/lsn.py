# -*- coding: utf-8 -*-
# Copyright: pgdts developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""WAL positions (LSNs): PostgreSQL's text form 'X/Y' and the int the engine compares and stores."""

from __future__ import annotations


def lsn_to_int(text):
    """'16/B374D848' -> 97500059720. None stays None; an int is returned as it is."""
    if text is None or isinstance(text, int):
        return text
    text = str(text).strip()
    high, sep, low = text.partition('/')
    if not sep:
        raise ValueError('not an LSN: %r' % text)
    return (int(high, 16) << 32) | int(low, 16)


def int_to_lsn(value):
    """97500059720 -> '16/B374D848'. None stays None."""
    if value is None:
        return None
    value = int(value)
    if value < 0:
        raise ValueError('an LSN cannot be negative: %r' % value)
    return '%X/%X' % (value >> 32, value & 0xFFFFFFFF)

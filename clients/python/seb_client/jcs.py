"""RFC 8785 (JCS) canonical JSON and seb's strict parameter parsing.

Written for this package, independently of the broker's Rust code, so that an executor in
Python checks a token's ``params_digest`` with a second implementation. It refuses what has no
single meaning rather than guessing: duplicate keys, nesting deeper than 32, numbers that are
not finite, integers beyond +/-(2^53 - 1).
"""

from __future__ import annotations

import decimal
import hashlib
import json
import math
from typing import Any

MAX_DEPTH = 32
MAX_SAFE_INTEGER = 2**53 - 1


class CanonicalError(ValueError):
    """A value with no canonical form (or text that is not strict JSON)."""


def parse_strict(text: str | bytes) -> Any:
    """Parses JSON as strictly as the broker parses request bodies."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise CanonicalError(f"duplicate key {key!r}")
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise CanonicalError(f"{name} is not a JSON number")

    def exact_float(literal: str) -> float:
        # As seb's json::inexact_number: a number written with more precision than a double
        # holds, or too small for one ("1e-400" reads as 0.0), is refused. It and the double
        # it rounds to would share one digest, and an executor reading exact decimals would
        # act on a number nobody was granted.
        number = float(literal)
        if decimal.Decimal(literal) != decimal.Decimal(repr(number)):
            raise CanonicalError(
                f"number {literal} is not held exactly by a double (it reads as {number!r})")
        return number

    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CanonicalError("not UTF-8") from e
    try:
        value = json.loads(text, object_pairs_hook=pairs, parse_constant=constant,
                           parse_float=exact_float)
    except RecursionError as e:
        raise CanonicalError("nesting too deep") from e
    except json.JSONDecodeError as e:
        raise CanonicalError(str(e)) from e
    canonicalize(value)  # depth and number limits
    return value


def canonicalize(value: Any) -> str:
    """The RFC 8785 serialisation of a JSON value (dict, list, str, int, float, bool, None)."""
    out: list[str] = []
    _write(out, value, 0)
    return "".join(out)


def params_digest(params: dict[str, Any]) -> bytes:
    """SHA-384 over the canonical JSON of the parameters (the token's ``params_digest``)."""
    if not isinstance(params, dict):
        raise CanonicalError("params must be a JSON object")
    return hashlib.sha384(canonicalize(params).encode("utf-8")).digest()


def request_digest(operation: str, resource: str, params: dict[str, Any]) -> bytes:
    """SHA-384 over the canonical JSON of ``{operation, resource, params}`` (what approvers sign)."""
    body = {"operation": operation, "resource": resource, "params": params}
    return hashlib.sha384(canonicalize(body).encode("utf-8")).digest()


def _write(out: list[str], value: Any, depth: int) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise CanonicalError(f"integer {value} is outside +/-(2^53-1)")
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_es_number(value))
    elif isinstance(value, str):
        _write_string(out, value)
    elif isinstance(value, (list, tuple)):
        if depth >= MAX_DEPTH:
            raise CanonicalError(f"nesting deeper than {MAX_DEPTH}")
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(out, item, depth + 1)
        out.append("]")
    elif isinstance(value, dict):
        if depth >= MAX_DEPTH:
            raise CanonicalError(f"nesting deeper than {MAX_DEPTH}")
        out.append("{")
        for key in value:
            if not isinstance(key, str):
                raise CanonicalError("object keys must be strings")
            # Checked before sorting: a lone surrogate has no UTF-16 form to sort by.
            if any(0xD800 <= ord(ch) <= 0xDFFF for ch in key):
                raise CanonicalError("lone surrogate in a member name")
        # Members sorted by their names' UTF-16 code units (RFC 8785 section 3.2.3).
        for i, key in enumerate(sorted(value, key=lambda k: k.encode("utf-16-be"))):
            if i:
                out.append(",")
            _write_string(out, key)
            out.append(":")
            _write(out, value[key], depth + 1)
        out.append("}")
    else:
        raise CanonicalError(f"{type(value).__name__} is not a JSON value")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _write_string(out: list[str], s: str) -> None:
    out.append('"')
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            raise CanonicalError("lone surrogate in a string")
        else:
            out.append(ch)
    out.append('"')


def _es_number(f: float) -> str:
    """ECMAScript Number::toString for a finite double (ECMA-262 Number::toString)."""
    if not math.isfinite(f):
        raise CanonicalError(f"{f} is not a finite number")
    if f == 0:
        return "0"
    sign = "-" if f < 0 else ""
    # repr gives the shortest digits that round-trip, as ECMAScript requires.
    mantissa, _, exp_text = repr(abs(f)).partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    digits = (int_part + frac_part).lstrip("0")
    # Position of the decimal point relative to the first significant digit.
    exponent = int(exp_text or 0) + len(int_part.lstrip("0") or "")
    if not int_part.strip("0"):
        # 0.000ddd: count the zeros after the point.
        exponent = int(exp_text or 0) - (len(frac_part) - len(frac_part.lstrip("0")))
    digits = digits.rstrip("0") or "0"
    k, n = len(digits), exponent
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        sign_e = "+" if e >= 0 else "-"
        body = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + sign_e + str(abs(e))
    return sign + body

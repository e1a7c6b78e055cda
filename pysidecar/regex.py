"""Envoy's and istiod's regex dialect, RE2 (PyPI `google-re2`): checked at load, matched on the
data path.

Promises:
- `re2_error(pattern)` is RE2's complaint about a pattern, or None. What Python's `re` takes and
  RE2 refuses (backreferences `\\1`, lookarounds `(?=` `(?<!`, possessive `a++`, repetition above
  1000, `\\Z`) is refused, as Envoy and istiod refuse it.
- `Regex(pattern).fullmatch(text)` is RE2's full match of the text (what Envoy's safe_regex
  matchers ask); `sub` replaces every match (RE2 GlobalReplace, `\\1` for groups), for
  regex_rewrite; `search` is RE2's unanchored match (admin's /stats?filter=).
- RE2's own error log is off: a refused pattern is reported once, by the config error.
"""

from __future__ import annotations

from typing import Any

import re2  # type: ignore[import-untyped]

_OPTIONS: Any = re2.Options()
_OPTIONS.log_errors = False
_ANCHOR_BOTH: Any = re2._re2.RE2.Anchor.ANCHOR_BOTH
_UNANCHORED: Any = re2._re2.RE2.Anchor.UNANCHORED
_NO_MATCH = (-1, -1)


def re2_error(pattern: str) -> str | None:
    try:
        re2.compile(pattern, _OPTIONS)
    except re2.error as e:
        msg = e.args[0] if e.args else str(e)
        return msg.decode("utf-8", "replace") if isinstance(msg, bytes) else str(msg)
    return None


class Regex:
    """A compiled RE2 pattern; `fullmatch` goes straight to RE2 (no match object built)."""

    __slots__ = ("_compiled", "_raw", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._compiled: Any = re2.compile(pattern, _OPTIONS)
        self._raw: Any = self._compiled._regexp

    def fullmatch(self, text: str) -> bool:
        b = text.encode()
        return bool(self._raw.Match(_ANCHOR_BOTH, b, 0, len(b))[0] != _NO_MATCH)

    def search(self, text: str) -> bool:
        """Whether RE2 finds the pattern anywhere in `text` (linear time, whatever the pattern)."""
        b = text.encode()
        return bool(self._raw.Match(_UNANCHORED, b, 0, len(b))[0] != _NO_MATCH)

    def sub(self, replacement: str, text: str) -> str:
        return str(self._compiled.sub(replacement, text))

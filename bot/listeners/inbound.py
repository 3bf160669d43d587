"""The boundary where Slack's payloads become job payloads (SPEC §14.4, §14.8).

* Typed text arrives escaped by Slack (``&lt;`` ``&gt;`` ``&amp;``): it is unescaped
  here, once, so what is stored is what the user typed and the builders escape it
  exactly once when it is shown.
* Control characters (NUL and friends, and lone surrogates, which no database can
  store as text) are refused here: PostgreSQL rejects a NUL in text and JSON, and an
  id with one stripped out would name something else (``8\\x0001`` is not 801). The
  refusal is answered and audited, with the control characters removed from what the
  audit row and the answer carry.
"""

from __future__ import annotations

import re

from bot.blocks.format import unescape

# C0 controls but tab, newline and carriage return (a reason may span lines), DEL, the
# C1 controls, and UTF-16 surrogates that JSON's \ud800 escapes can produce.
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
REFUSED = (
    "That request contained control characters (such as NUL), which snapbot does not "
    "accept; nothing was done. Retype it without them."
)


def typed(text: str) -> str:
    """A command's text as the user typed it (Slack escapes &, < and >)."""
    return unescape(text)


def controls_in(payload: dict) -> list[str]:
    """The names of the payload's text fields that carry a control character."""
    return sorted(k for k, v in payload.items() if isinstance(v, str) and CONTROL.search(v))


def without_controls(payload: dict) -> dict:
    """The payload with every control character removed, for the refusal's audit row
    and answer only: never acted on."""
    return {k: CONTROL.sub("", v) if isinstance(v, str) else v for k, v in payload.items()}


def refusal_detail(fields: list[str]) -> str:
    return "control characters in " + ", ".join(fields)

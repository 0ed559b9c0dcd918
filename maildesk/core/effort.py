"""Efforts and due dates as agents write them: `45m`, `90m`, `1.5h`, `2h30m`, `1d` (8 h).

The 60-minute rule of the customer's process lives here too: work up to an hour starts
without approval, anything longer needs the responsible representative's approval.
"""

from __future__ import annotations

import re
from datetime import date

MINUTES_PER_WORKING_DAY = 8 * 60
APPROVAL_THRESHOLD_MINUTES = 60

_UNIT_MINUTES = {"d": MINUTES_PER_WORKING_DAY, "h": 60, "m": 1}
_PART = re.compile(r"(\d+(?:[.,]\d+)?)\s*(d|h|m)", re.IGNORECASE)
_WHOLE = re.compile(r"^(?:\d+(?:[.,]\d+)?\s*[dhm]\s*)+$", re.IGNORECASE)
_UNIT_WORDS = (
    (re.compile(r"\b(?:min|mins|minutes?|minūtes?|minūtēm)\b", re.I), "m"),
    (re.compile(r"\b(?:hrs?|hours?|stundas?|st)\b", re.I), "h"),
    (re.compile(r"\b(?:days?|dienas?)\b", re.I), "d"),
)


class EffortError(ValueError):
    """Raised when an effort cannot be read; the message is safe to show to the agent."""


def parse_effort(text: str) -> int:
    """Minutes in an effort such as `2h30m`; raises EffortError when it is not one."""
    compact = text.strip()
    for pattern, unit in _UNIT_WORDS:
        compact = pattern.sub(unit, compact)
    if not compact or not _WHOLE.match(compact):
        raise EffortError(f"cannot read the effort {text.strip()!r} (write e.g. 45m, 1.5h, 2h30m, 1d)")
    minutes = sum(float(number.replace(",", ".")) * _UNIT_MINUTES[unit.lower()]
                  for number, unit in _PART.findall(compact))
    if minutes <= 0:
        raise EffortError(f"the effort {text.strip()!r} is not positive")
    return round(minutes)


def format_effort(minutes: int) -> str:
    """`150` -> `2h30m`: the inverse of parse_effort for whole hours and minutes."""
    hours, rest = divmod(minutes, 60)
    if hours and rest:
        return f"{hours}h{rest}m"
    return f"{hours}h" if hours else f"{rest}m"


def needs_approval(minutes: int) -> bool:
    """The customer's rule: more than 60 minutes goes to the responsible representative."""
    return minutes > APPROVAL_THRESHOLD_MINUTES


_DMY = re.compile(r"^(\d{1,2})\.(\d{1,2})\.(\d{4})\.?$")


def parse_due_date(text: str) -> date:
    """An ISO date (`2026-12-18`) or the Latvian `18.12.2026`; ValueError otherwise."""
    value = text.strip()
    match = _DMY.match(value)
    if match:
        day, month, year = (int(group) for group in match.groups())
        return date(year, month, day)
    return date.fromisoformat(value)

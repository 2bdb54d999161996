"""Cron expressions: when a scheduled job (:mod:`flask_ampalibe.scheduler`) runs.

:class:`Cron` parses the standard 5-field form (and aiocron's 6th field for seconds), tells
whether a wall-clock time is a run time, and finds the next one.  It knows nothing of time
zones or of the database: the scheduler reads the times in the job's zone and claims each run
time once across workers.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from .errors import AmpalibeError

__all__ = ["Cron", "ScheduleError"]


class ScheduleError(AmpalibeError, ValueError):
    """A cron expression or a time zone is not valid."""


_MONTHS = {name: i for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
_DAYS = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
_MONTH_DAYS = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}


class Cron:
    """A standard 5-field cron expression: ``minute hour day-of-month month day-of-week``.

    A 6th field gives the seconds (``"* * * * * */10"``: every 10 seconds), as in the
    ``aiocron``/``croniter`` specs of Ampalibe 1.1.9's ``crontab``.

    Each field takes ``*``, a number, a range ``a-b``, a step ``*/n`` or ``a-b/n``, or a list of
    those (``1,15,30-40/5``); months and days of week also take names (``jan``, ``mon-fri``).
    Sunday is ``0`` or ``7``.  ``@hourly``, ``@daily``, ``@weekly``, ``@monthly`` and ``@yearly``
    are accepted too.  As in Vixie cron, when both day fields are restricted a day matching
    either one runs.

    :raises ScheduleError: naming the field that is wrong.

    Example::

        >>> Cron("*/15 9-17 * * mon-fri").matches(datetime(2024, 5, 6, 9, 30))
        True
    """

    def __init__(self, expr: str) -> None:
        self.expr = expr
        text = _MACROS.get(expr.strip().lower(), expr) if isinstance(expr, str) else expr
        parts = text.split() if isinstance(text, str) else []
        if len(parts) not in (5, 6):
            raise ScheduleError(
                f"cron {expr!r} must have 5 fields (minute hour day-of-month month day-of-week), "
                "e.g. '*/5 * * * *' for every 5 minutes, and may have a 6th for the seconds."
            )
        #: The seconds of a 6-field expression, else ``None`` (runs at second 0 of each minute).
        self.seconds = _parse_field(expr, parts[5], "second", 0, 59, {}) if len(parts) == 6 else None
        parts = parts[:5]
        sets = [_parse_field(expr, part, *spec) for part, spec in zip(parts, _FIELDS)]
        self.minutes, self.hours, self.days, self.months, weekdays = sets
        self.weekdays = frozenset(d % 7 for d in weekdays)
        # Vixie cron: a day field starting with '*' is "unrestricted" (even '*/2').
        self._any_day = parts[2].startswith("*")
        self._any_weekday = parts[4].startswith("*")
        if self._any_weekday and not any(d <= _MONTH_DAYS[m] for m in self.months for d in self.days):
            raise ScheduleError(f"cron {expr!r} never runs: no chosen month has the chosen day of month.")

    def __repr__(self) -> str:
        return f"Cron({self.expr!r})"

    @property
    def step(self) -> int:
        """The unit of run times in seconds: 1 with a seconds field, else 60."""
        return 60 if self.seconds is None else 1

    def matches(self, when: datetime) -> bool:
        """Whether the minute of ``when`` (a wall-clock time) is a run time (its second too, with
        a seconds field)."""
        if self.seconds is not None and when.second not in self.seconds:
            return False
        if when.minute not in self.minutes or when.hour not in self.hours or when.month not in self.months:
            return False
        return self._day_matches(when)

    def _day_matches(self, when: datetime) -> bool:
        in_days = when.day in self.days
        in_weekdays = (when.weekday() + 1) % 7 in self.weekdays
        if self._any_day or self._any_weekday:
            return in_days and in_weekdays
        return in_days or in_weekdays

    def next_after(self, after: datetime) -> datetime:
        """The first run time strictly after ``after``, in ``after``'s time zone (wall clock)."""
        if self.seconds is not None:
            minute = after.replace(second=0, microsecond=0)
            if self.matches(minute.replace(second=min(self.seconds))):  # the rest of this minute
                later = [sec for sec in sorted(self.seconds) if sec > after.second]
                if later:
                    return minute.replace(second=later[0])
            return self._next_minute(minute).replace(second=min(self.seconds))
        return self._next_minute(after)

    def _next_minute(self, after: datetime) -> datetime:
        when = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = when.year + 30  # a leap-day schedule can wait 8 years; nothing sane waits 30
        while when.year <= limit:
            if when.month not in self.months:
                year, month = (when.year + 1, 1) if when.month == 12 else (when.year, when.month + 1)
                when = when.replace(year=year, month=month, day=1, hour=0, minute=0)
            elif not self._day_matches(when):
                when = when.replace(hour=0, minute=0) + timedelta(days=1)
            elif when.hour not in self.hours:
                when = when.replace(minute=0) + timedelta(hours=1)
            elif when.minute not in self.minutes:
                when += timedelta(minutes=1)
            else:
                return when
        raise ScheduleError(f"cron {self.expr!r} has no run time in the next 30 years.")


def _parse_field(expr: str, text: str, name: str, lo: int, hi: int, names: dict[str, int]) -> frozenset[int]:
    def bad(part: str, why: str) -> ScheduleError:
        return ScheduleError(f"cron {expr!r}: {name} {part!r} {why} (allowed: {lo}-{hi}).")

    def number(part: str, token: str) -> int:
        value = names.get(token.lower()) if names else None
        if value is None:
            if not token.isdigit():
                raise bad(part, "is not a number" + (" or a name" if names else ""))
            value = int(token)
        if not lo <= value <= hi:
            raise bad(part, "is out of range")
        return value

    values: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise bad(part, "has a step that is not a positive number")
            step = int(step_text)
        if base == "*":
            first, last = lo, hi
        elif "-" in base:
            start, _, end = base.partition("-")
            first, last = number(part, start), number(part, end)
            if first > last:
                raise bad(part, "is a range that runs backwards")
        else:
            first = number(part, base)
            last = hi if slash else first  # 'a/n' means a, a+n, ... up to the end
        values.update(range(first, last + 1, step))
    return frozenset(values)

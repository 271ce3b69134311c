"""When a timer's ticks fall: ``start + k × interval``, for k = 0, 1, 2...

The rules, written once:

* An interval is an ISO 8601 duration (``PT1H``, ``P1D``, ``P1M``) or a number of seconds. Years and months are
  calendar arithmetic: tick k is ``start`` plus k months, computed from ``start`` each time (never by adding one
  month to the previous tick), so a timer started on 31 January runs on the last day of February and then on
  31 March again, without drifting.
* A tick is *due* once its time has come. A due tick is *missed* when it is more than :data:`MISFIRE_SECONDS`
  late, or when the tick after it is due too: it is then recorded as skipped, never run late in a burst.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import isodate

UTC = dt.timezone.utc
MISFIRE_SECONDS = 60.0
"""A tick not started within this many seconds of its time (or before the next tick) is skipped."""
_MONTH_SECONDS = 30.436875 * 86400


class ScheduleError(ValueError):
    """What is wrong with an interval or a start (the message names the field)."""


@dataclasses.dataclass(frozen=True)
class Interval:
    """A fixed number of seconds, plus a number of calendar months (either may be zero, not both)."""

    seconds: float
    months: int = 0
    text: str = ""

    @property
    def approximate_seconds(self) -> float:
        return self.seconds + self.months * _MONTH_SECONDS

    def iso(self) -> str:
        return self.text or isodate.duration_isoformat(dt.timedelta(seconds=self.seconds))


def parse_interval(value: object, minimum: float) -> Interval:
    """The interval given as ISO 8601 text or a number of seconds, at least ``minimum`` seconds long."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ScheduleError("interval: give an ISO 8601 duration such as 'PT1H' or 'P1M', or a number of seconds.")
    if isinstance(value, str):
        try:
            parsed = isodate.parse_duration(value)
        except (isodate.ISO8601Error, ValueError, TypeError, OverflowError):
            raise ScheduleError(f"interval: {value[:40]!r} is not an ISO 8601 duration such as 'PT1H', 'P1D' or "
                                "'P1M'.") from None
        if isinstance(parsed, isodate.Duration):
            months = int(parsed.years * 12 + parsed.months)
            if months != parsed.years * 12 + parsed.months:
                raise ScheduleError("interval: years and months must be whole numbers.")
            interval = Interval(parsed.tdelta.total_seconds(), months, value)
        else:
            interval = Interval(parsed.total_seconds(), 0, value)
    else:
        if not math.isfinite(value):
            raise ScheduleError("interval: must be a finite number of seconds.")
        interval = Interval(float(value))
    if interval.seconds < 0 or interval.months < 0:
        raise ScheduleError("interval: must not be negative.")
    if interval.approximate_seconds < minimum:
        raise ScheduleError(f"interval: must be at least {minimum:g} seconds on this deployment.")
    return interval


def tick_time(start: float, interval: Interval, index: int) -> float:
    """The time (epoch seconds) of tick ``index``."""
    if not interval.months:
        return start + index * interval.seconds
    begin = dt.datetime.fromtimestamp(start, UTC)
    shifted = begin + isodate.Duration(months=interval.months * index)
    return shifted.timestamp() + index * interval.seconds


def first_index_at_or_after(start: float, interval: Interval, when: float) -> int:
    """The smallest tick index whose time is at or after ``when`` (0 when ``when`` is before ``start``)."""
    if when <= start:
        return 0
    index = max(0, int((when - start) // interval.approximate_seconds))
    while index > 0 and tick_time(start, interval, index - 1) >= when:
        index -= 1
    while tick_time(start, interval, index) < when:
        index += 1
    return index


def last_index_at_or_before(start: float, interval: Interval, when: float) -> int:
    """The largest tick index whose time is at or before ``when`` (-1 when none is)."""
    return first_index_at_or_after(start, interval, math.nextafter(when, math.inf)) - 1


def to_epoch(text: str, field: str) -> float:
    """An ISO 8601 date-time (UTC if it names no zone) as epoch seconds."""
    try:
        value = isodate.parse_datetime(text) if "T" in text else None
        if value is None:
            value = dt.datetime.combine(isodate.parse_date(text), dt.time())
    except (isodate.ISO8601Error, ValueError, TypeError, OverflowError):
        raise ScheduleError(f"{field}: {text[:40]!r} is not an ISO 8601 date-time such as "
                            "'2027-01-31T09:00:00Z'.") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")

"""Open-loop dispatch: send each request at its scheduled time, whatever the server is doing.

The clock, the sleep and the way a request is started are injected, so the same loop runs under
gevent inside Locust and under plain threads in the unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from loadtests.shapes import Arrival

LOCUST_CONFIG_ENV = "NESTEDFP_LOADTEST_CONFIG"  # path of the JSON config the runner hands to the locustfile

# start(index, arrival, lag_s) -> False when the request could not be started (concurrency cap)
StartFn = Callable[[int, Arrival, float], bool]


@dataclass
class DispatchResult:
    t0: float  # clock value the schedule is relative to
    sent: int = 0
    dropped: int = 0
    lags: list[float] = field(default_factory=list)  # actual minus scheduled start, seconds


def dispatch_open_loop(arrivals: Sequence[Arrival], start: StartFn, *, now: Callable[[], float],
                       sleep: Callable[[float], None]) -> DispatchResult:
    """Start every arrival at ``t0 + arrival.t``; late starts go out at once (no catch-up pacing).

    Returns when the last request has been started, so it is bounded by the schedule's length.
    """
    res = DispatchResult(t0=now())
    for i, a in enumerate(arrivals):
        wait = res.t0 + a.t - now()
        if wait > 0:
            sleep(wait)
        lag = now() - (res.t0 + a.t)
        if start(i, a, lag):
            res.sent += 1
            res.lags.append(lag)
        else:
            res.dropped += 1
    return res

"""A liveness signal for a supervisor: ``beat()``, called once per step, touches the file named by $SYNPRO_HEARTBEAT.

tpu/launch.py sets SYNPRO_HEARTBEAT=~/synpro_logs/<run>.heartbeat on every worker, and tpu/babysit.py relaunches a
job whose heartbeat on worker 0 is older than --stale_s (a hung job: a stuck collective, a dead peer host). A beat
touches the file at most once every $SYNPRO_HEARTBEAT_S seconds (default 60), so calling it every step costs a clock
read. Without SYNPRO_HEARTBEAT it does nothing; a file it cannot write is warned about once and never stops the job.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)

ENV = "SYNPRO_HEARTBEAT"
INTERVAL_ENV = "SYNPRO_HEARTBEAT_S"
DEFAULT_INTERVAL_S = 60.0

_clock = time.monotonic
_last: tuple[str, float] | None = None  # (the file, when it was last touched or tried)
_warned = False


def _warn_once(message: str, *args) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning(message, *args)


def _interval() -> float:
    raw = os.environ.get(INTERVAL_ENV)
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        return max(0.0, float(raw))
    except ValueError:
        _warn_once("%s=%r is not a number of seconds; beating every %g s", INTERVAL_ENV, raw, DEFAULT_INTERVAL_S)
        return DEFAULT_INTERVAL_S


def beat() -> None:
    """Touch $SYNPRO_HEARTBEAT (create it, or update its modification time) unless it was touched less than
    $SYNPRO_HEARTBEAT_S seconds ago; a no-op when SYNPRO_HEARTBEAT is unset or empty."""
    global _last
    path = os.environ.get(ENV)
    if not path:
        return
    now = _clock()
    if _last is not None and _last[0] == path and now - _last[1] < _interval():
        return
    _last = (path, now)  # a failed touch waits out the interval too: no error on every step
    try:
        with open(path, "a"):
            pass
        os.utime(path)
    except OSError as e:
        _warn_once("heartbeat: cannot touch %s=%s (%s); the job goes on without a heartbeat", ENV, path, e)

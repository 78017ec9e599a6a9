"""sidecarctl's Ctrl-C handling for loops (`stat --watch`): the handler must be safe
wherever the main thread is when SIGINT arrives."""

from __future__ import annotations

import os
import signal
import threading

from admin.ctl import _StopOnSigint


def test_sigint_during_the_sleep_between_refreshes_ends_it() -> None:
    # The handler runs in the main thread at any point; an earlier version called
    # threading.Event.set() from it while the loop sat in Event.wait(), holding the
    # same lock: a deadlock that hung `stat --watch` on Ctrl-C, one run in a few dozen.
    stop = _StopOnSigint()
    with stop:
        if not stop._installed:  # e.g. SIGINT ignored by whoever started the tests
            stop._handle(signal.SIGINT, None)
        else:
            threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT)).start()
        stop.sleep(60.0)  # returns as soon as the handler has run, not after 60 s
    assert stop.stopped


def test_the_previous_handler_is_back_after_the_loop() -> None:
    before = signal.getsignal(signal.SIGINT)
    with _StopOnSigint():
        pass
    assert signal.getsignal(signal.SIGINT) is before


def test_sleep_without_sigint_waits_its_time() -> None:
    stop = _StopOnSigint()
    stop.sleep(0.0)
    assert not stop.stopped

"""The sidecar's decisions, with no I/O.

Everything here is pure: no asyncio, aiohttp or grpc (tests/test_layout.py enforces it).
Time comes from a `Clock`, randomness from a seeded `random.Random`, so every decision
is tested by stepping a `FakeClock`, never by sleeping.
"""

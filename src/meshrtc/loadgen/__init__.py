"""The fair load generator: synthetic members for benchmarks and the demo (docs/benchmarks.md).

Members connect to the transport alone (a star) and replay media encoded once at start
(:mod:`meshrtc.rtc.star_member`), so the generator costs a fraction of the transport it loads.
:mod:`meshrtc.loadgen.replay` and :mod:`meshrtc.loadgen.onsets` are its pure parts;
``python -m meshrtc.loadgen`` is the child process ``meshrtc demo`` and ``bench/members.py`` start.
"""

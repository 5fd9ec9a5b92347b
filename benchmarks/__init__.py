"""Benchmarks of nanogpt-async against its peers (``python -m benchmarks`` or ``nox -s bench``).

Every contender runs the same workload against the same fake NanoGPT server, which runs in its
own process on loopback so that the CPU measured is the client's alone. Each (contender,
workload) pair runs in a fresh subprocess, so peak RSS and CPU time belong to it only; contenders
alternate order across rounds and the medians are reported. See ``docs/benchmarks.md``.
"""

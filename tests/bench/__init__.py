"""On-demand benchmarks (``python -m tests.bench`` or ``make bench``), never collected by pytest.

Each ``bench_*.py`` module has a ``main(argv)`` that starts what it measures (a real daemon and
the fake LLM on loopback), prints a table and cleans up after itself.
"""

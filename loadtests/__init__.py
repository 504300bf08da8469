"""Burst load tests for the NestedFP serving app: open-loop Locust runs with TTFT/TPOT SLO reports.

Entry points: ``python -m loadtests run|compare`` and ``loadtests.runner.run_load(LoadTestConfig(...))``.
Kept import-light: Locust (gevent) only ever runs in its own subprocess.
"""

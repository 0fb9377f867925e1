import os
import sys

from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))

settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
# Mutation testing runs the core's suites once per mutant: few examples, same ones every time.
settings.register_profile("mutation", max_examples=12, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_default_sweep_plots(monkeypatch):
    """Hundreds of small sweeps here: none writes plots unless its test asks (--plots, or sets it back)."""
    from dexsim.cli import sweep
    monkeypatch.setattr(sweep, "PLOTS_BY_DEFAULT", False)

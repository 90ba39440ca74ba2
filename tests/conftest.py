import os

from hypothesis import HealthCheck, settings

# CI runs more examples, the same ones every run (derandomized: a submission's CI cannot fail
# on a draw no earlier run saw); local runs stay quick and explore new draws each time.
# Kernel tests are fast, deadlines only flake.
settings.register_profile(
    "ci", max_examples=150, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(  # a longer hunt for counterexamples, by hand
    "stress", max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(  # tools/mutate.py: quick, and the same examples every run
    "mutation", max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

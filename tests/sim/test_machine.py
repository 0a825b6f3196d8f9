"""The deterministic simulation: hypothesis drives programs and faults against the whole
control plane, and checks the invariants after every step (see README.md).

``GRAIN_SIM_EXAMPLES`` sets how many programs to try (100 by default, ~30 s here).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from .machine import ClusterMachine

ClusterMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("GRAIN_SIM_EXAMPLES", "100")), stateful_step_count=40,
    deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much])
TestCluster = ClusterMachine.TestCase

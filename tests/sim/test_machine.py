"""The deterministic simulation: hypothesis drives programs and faults against the whole
control plane (see README.md)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

from .machine import ClusterMachine

ClusterMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TestCluster = ClusterMachine.TestCase

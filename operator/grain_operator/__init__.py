"""The Grain Kubernetes operator: turns a GrainCluster into an executor and a worker DaemonSet.

Modules, one job each:

- ``model``    the pydantic model of GrainCluster spec and status (the one schema source)
- ``crd``      the CustomResourceDefinition generated from the model (``make crd``)
- ``docs``     the field reference generated from the model (``make docs``)
- ``render``   pure functions: spec -> Deployment, Service, DaemonSet, Secret dicts
- ``apply``    idempotent create-or-patch of rendered children through the Kubernetes API
- ``status``   observe children and the executor's /status; compute phase and conditions
- ``rbac``     the least-privilege rules the operator needs
- ``settings`` the operator's configuration and kopf settings
- ``handlers`` thin kopf handlers wiring the above together
- ``__main__`` ``python -m grain_operator``

The operator imports none of grain's I/O modules (and no trio); a test checks it.
"""

from grain_operator.model import API_GROUP, API_VERSION, KIND, PLURAL

__all__ = ["API_GROUP", "API_VERSION", "KIND", "PLURAL"]

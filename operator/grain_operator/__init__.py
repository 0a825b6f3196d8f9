"""The Grain Kubernetes operator: turns a GrainCluster into an executor and a worker DaemonSet.

Modules, one job each:

- ``model``       the pydantic model of GrainCluster spec and status (the one schema source)
- ``crd``         the CustomResourceDefinition generated from the model (``make crd``)
- ``docs``        the field reference generated from the model (``make docs``)
- ``names``       names, labels and ownerReferences of the children
- ``render``      pure: spec -> the executor Deployment and Service, the worker DaemonSet
- ``netpol``      pure: spec -> the NetworkPolicies of the executor and the workers
- ``tokens``      pure: the token Secrets (workers, one per user) and the executor's tokens file
- ``tls``         the per-cluster CA and the executor's certificate
- ``credentials`` ensure the Secrets (TLS, tokens) through the Kubernetes API
- ``kube``        the official Kubernetes client, as the operator uses it (and kopf's login)
- ``apply``       server-side apply of the rendered children, only when they differ
- ``status``      observe children and the executor's /status; compute phase and conditions
- ``rbac``        the least-privilege rules the operator needs
- ``settings``    the operator's configuration and kopf settings
- ``handlers``    thin kopf handlers wiring the above together
- ``__main__``    ``python -m grain_operator``

The operator imports none of grain's I/O modules (and no trio); a test checks it.
"""

from grain_operator.model import API_GROUP, API_VERSION, KIND, PLURAL


def version() -> str:
    """The installed distribution's version (the operator ships in Grain's distribution)."""
    from importlib.metadata import PackageNotFoundError, packages_distributions
    from importlib.metadata import version as dist_version

    for dist in packages_distributions().get("grain_operator", []):
        try:
            return dist_version(dist)
        except PackageNotFoundError:  # pragma: no cover - a broken install
            continue
    return "0+unknown"


__all__ = ["API_GROUP", "API_VERSION", "KIND", "PLURAL", "version"]

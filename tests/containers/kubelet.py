"""A kubelet stand-in: the Deployments and DaemonSets on the KMock API emulator, run as
containers from their images, with their status written back.

No Kubernetes control plane can run here, and KMock runs no controllers, so this plays the
Deployment and DaemonSet controllers and the kubelet of a few "nodes" (each a set of this
machine's CPUs). It reads the workloads generically, as a kubelet reads pod specs, rather than
knowing what the Grain operator renders today:

- containers: image, command (replaces the entry point) and args with ``$(VAR)`` expanded, env
  (values, the downward API, Secret keys), resources (``limits.memory`` -> ``--memory``,
  ``limits.cpu`` -> ``--cpus``; the node's CPUs -> ``--cpuset-cpus``, as its cgroup cpuset);
- security contexts: runAsUser/runAsGroup/fsGroup/supplementalGroups -> ``--user``,
  ``--group-add``; runAsNonRoot checked; readOnlyRootFilesystem -> ``--read-only``;
  allowPrivilegeEscalation false -> no-new-privileges; capabilities -> ``--cap-drop``/
  ``--cap-add``; privileged pods and other volume kinds are refused with an error;
- volumes: Secrets as files (items or every key, defaultMode/mode, group fsGroup), read-only;
  emptyDir as a tmpfs;
- the cluster's DNS: every Service's names resolve to 127.0.0.1 in the containers (all pods
  share the host's network here, so a Service is its pods' port on loopback);
- readiness probes (httpGet, tcpSocket, exec) polled; Pod objects created with their status
  (phase, Ready) so that clients find them (discovery's port-forward does);
- rollouts: a changed pod template replaces the pods: a Deployment's all at once (Recreate; on
  a shared host network two executors cannot hold one port anyway), a DaemonSet's node by
  node, at most ``maxUnavailable`` at a time; a pod is stopped with SIGTERM and killed after
  its ``terminationGracePeriodSeconds`` (capped by ``grace_cap`` for a short tier).

A thread runs the control loop; errors it meets are kept and raised by ``check()`` and at exit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from container_harness import Container, Containers, http_ok
from kmock_harness import DAEMONSETS, DEPLOYMENTS, PODS, SECRETS, SERVICES, KMock

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Node:
    """A node of the stand-in cluster: a name, its CPUs and labels."""

    name: str
    cpus: tuple[int, ...]
    labels: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass
class Pod:
    """A pod the stand-in runs: which workload, which template, where, its containers."""

    name: str
    kind: str
    owner: str
    template_hash: str
    node: Node
    spec: dict[str, Any]
    containers: list[Container] = field(default_factory=list)
    ready: bool = False
    restarts: int = 0


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion (``$$`` escapes; unknown references stay)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (``1Gi``, ``512M``, ``1e9``) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6,
             "G": 10**9, "T": 10**12}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(Decimal(quantity[: -len(suffix)]) * factor)
    return int(Decimal(quantity))


def cpu_quantity(quantity: str) -> Decimal:
    """A Kubernetes CPU quantity (``500m``, ``2``) in CPUs."""
    return Decimal(quantity[:-1]) / 1000 if quantity.endswith("m") else Decimal(quantity)


def template_hash(template: dict[str, Any]) -> str:
    """What a controller's pod-template-hash is: a digest of the template."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def flags_translation(role: str, args: list[str], supported: frozenset[str]) -> list[str]:
    """WAITS FOR CORE: flags the image's ``grain ROLE`` does not offer yet, as today's.

    ``--client-tokens`` (per-user tokens) is dropped: clients then present the workers' token;
    ``--worker-token-file`` becomes ``--token-file``; ``--client-grace`` and
    ``--drain-timeout`` are dropped. Any other unknown flag is an error."""
    out: list[str] = []
    it = iter(args)
    for arg in it:
        if not arg.startswith("--") or arg.split("=", 1)[0] in supported:
            out.append(arg)
        elif arg == "--client-tokens":
            next(it)
        elif arg == "--worker-token-file":
            out += ["--token-file", next(it)]
        elif arg in ("--client-grace", "--drain-timeout"):
            next(it)
        else:
            raise AssertionError(f"grain {role} in the image has no {arg}, and the stand-in "
                                 "kubelet does not know how to translate it")
    return out


class Kubelet:
    """Runs the namespace's Deployments and DaemonSets as containers (see the module doc)."""

    def __init__(self, api: KMock, box: Containers, namespace: str, workdir: Path, *,
                 nodes: list[Node], control_plane: Node, grace_cap: float | None = None,
                 interval: float = 0.2) -> None:
        self.api, self.box, self.engine = api, box, box.engine
        self.namespace, self.workdir = namespace, workdir
        self.nodes, self.control_plane = nodes, control_plane
        self.grace_cap, self.interval = grace_cap, interval
        self.pods: dict[str, Pod] = {}
        self.stopped: list[Pod] = []  # pods replaced or removed, in order (for assertions)
        self.errors: list[BaseException] = []
        self._users: dict[str, str] = {}  # image -> its user; "id:" + image -> its id
        self._flags: dict[tuple[str, str], frozenset[str]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="kubelet", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Kubelet:
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        if exc_type is not None:
            print(self.logs())  # shown by pytest with the failure
        with self._lock:
            for pod in list(self.pods.values()):
                self._stop_pod(pod, grace=0)
        self.check()

    def check(self) -> None:
        """Raise the first error the control loop met."""
        if self.errors:
            raise AssertionError(f"the stand-in kubelet failed: {self.errors[0]!r}") from self.errors[0]

    def snapshot(self) -> tuple[list[Pod], list[Pod]]:
        """The pods running and the pods stopped so far, copied under the loop's lock (the
        test's thread reads them while the control loop changes them)."""
        with self._lock:
            return list(self.pods.values()), list(self.stopped)

    def logs(self) -> str:
        """Every running pod's container output (for failure messages)."""
        return "\n".join(f"--- pod {p.name} ({c.name}):\n{c.logs()[-4000:]}"
                         for p in list(self.pods.values()) for c in p.containers)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    self.sync()
            except Exception as e:  # kept for check(): a thread cannot fail the test itself
                self.errors.append(e)
                return
            self._stop.wait(self.interval)

    # -- the controllers -------------------------------------------------------------------------

    def _objects(self, resource: str) -> list[dict[str, Any]]:
        return api_list(self.api, resource, self.namespace)

    def sync(self) -> None:
        """One pass: pods for every workload, their readiness, the workloads' status."""
        wanted: set[str] = set()
        for dep in self._objects(DEPLOYMENTS):
            self._deployment(dep)
            wanted.add(f"Deployment/{dep['metadata']['name']}")
        for ds in self._objects(DAEMONSETS):
            self._daemonset(ds)
            wanted.add(f"DaemonSet/{ds['metadata']['name']}")
        for pod in list(self.pods.values()):
            if f"{pod.kind}/{pod.owner}" not in wanted:  # its workload was deleted
                self._stop_pod(pod)
        for pod in list(self.pods.values()):
            self._probe(pod)
        for dep in self._objects(DEPLOYMENTS):
            self._write_status(DEPLOYMENTS, dep, self._deployment_status(dep))
        for ds in self._objects(DAEMONSETS):
            self._write_status(DAEMONSETS, ds, self._daemonset_status(ds))

    def _owned(self, kind: str, name: str) -> list[Pod]:
        return [p for p in self.pods.values() if p.kind == kind and p.owner == name]

    def _deployment(self, dep: dict[str, Any]) -> None:
        name, template = dep["metadata"]["name"], dep["spec"]["template"]
        want, replicas = template_hash(template), int(dep["spec"].get("replicas", 1))
        pods = self._owned("Deployment", name)
        stale = [p for p in pods if p.template_hash != want]
        for pod in stale:  # Recreate: the old pods go before the new ones start
            self._stop_pod(pod)
        current = [p for p in pods if p.template_hash == want]
        for pod in current[replicas:]:
            self._stop_pod(pod)
        for _ in range(replicas - len(current)):
            suffix = f"{want[:8]}-{uuid.uuid4().hex[:5]}"
            self._start_pod(f"{name}-{suffix}", "Deployment", name, template, want,
                            self.control_plane, _uid(dep))

    def _daemonset(self, ds: dict[str, Any]) -> None:
        name, template = ds["metadata"]["name"], ds["spec"]["template"]
        want = template_hash(template)
        selector = template["spec"].get("nodeSelector") or {}
        nodes = [n for n in self.nodes if all(n.labels.get(k) == v for k, v in selector.items())]
        pods = self._owned("DaemonSet", name)
        strategy = ds["spec"].get("updateStrategy") or {}
        max_unavailable = int((strategy.get("rollingUpdate") or {}).get("maxUnavailable", 1))
        for pod in pods:
            if pod.node not in nodes:
                self._stop_pod(pod)
        by_node = {p.node.name: p for p in self._owned("DaemonSet", name)}
        for node in nodes:
            if node.name not in by_node:
                self._start_pod(f"{name}-{uuid.uuid4().hex[:5]}", "DaemonSet", name, template,
                                want, node, _uid(ds))
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            return  # OnDelete: pods are replaced only when deleted
        unavailable = sum(1 for p in self._owned("DaemonSet", name) if not p.ready)
        for pod in self._owned("DaemonSet", name):
            if unavailable >= max_unavailable:
                break
            if pod.template_hash != want:
                self._stop_pod(pod)
                self._start_pod(f"{name}-{uuid.uuid4().hex[:5]}", "DaemonSet", name, template,
                                want, pod.node, _uid(ds))
                unavailable += 1

    def _deployment_status(self, dep: dict[str, Any]) -> dict[str, Any]:
        pods = self._owned("Deployment", dep["metadata"]["name"])
        want = template_hash(dep["spec"]["template"])
        ready = sum(1 for p in pods if p.ready)
        return {"replicas": len(pods), "readyReplicas": ready, "availableReplicas": ready,
                "updatedReplicas": sum(1 for p in pods if p.template_hash == want),
                "observedGeneration": dep["metadata"].get("generation", 1)}

    def _daemonset_status(self, ds: dict[str, Any]) -> dict[str, Any]:
        pods = self._owned("DaemonSet", ds["metadata"]["name"])
        want = template_hash(ds["spec"]["template"])
        ready = sum(1 for p in pods if p.ready)
        selector = ds["spec"]["template"]["spec"].get("nodeSelector") or {}
        desired = sum(1 for n in self.nodes if all(n.labels.get(k) == v for k, v in selector.items()))
        return {"desiredNumberScheduled": desired, "currentNumberScheduled": len(pods),
                "numberReady": ready, "numberAvailable": ready,
                "updatedNumberScheduled": sum(1 for p in pods if p.template_hash == want),
                "observedGeneration": ds["metadata"].get("generation", 1)}

    def _write_status(self, resource: str, obj: dict[str, Any], status: dict[str, Any]) -> None:
        current = obj.get("status") or {}
        if any(current.get(k) != v for k, v in status.items()):
            self.api.patch(resource, self.namespace, obj["metadata"]["name"], {"status": status},
                           sub="status")

    # -- pods --------------------------------------------------------------------------------------

    def _start_pod(self, name: str, kind: str, owner: str, template: dict[str, Any], want: str,
                   node: Node, owner_uid: str) -> None:
        spec = json.loads(json.dumps(template["spec"]))
        pod = Pod(name, kind, owner, want, node, spec)
        meta = template.get("metadata") or {}
        # KMock assigns no uids; clients (the official one) require them in ownerReferences.
        self.api.create(PODS, self.namespace, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace, "uid": str(uuid.uuid4()),
                         "labels": dict(meta.get("labels") or {}),
                         "annotations": dict(meta.get("annotations") or {}),
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": owner,
                                              "uid": owner_uid, "controller": True}]},
            "spec": {**spec, "nodeName": node.name},
            "status": {"phase": "Pending"},
        })
        self.pods[name] = pod
        try:
            for container in spec["containers"]:
                pod.containers.append(self._run_container(pod, container))
        finally:
            self._report(pod)

    def _stop_pod(self, pod: Pod, grace: float | None = None) -> None:
        """SIGTERM, then SIGKILL after the pod's grace period (docker stop), then remove."""
        if grace is None:
            grace = float(pod.spec.get("terminationGracePeriodSeconds", 30))
            if self.grace_cap is not None:
                grace = min(grace, self.grace_cap)
        for c in pod.containers:
            self.engine.run("stop", "--time", str(int(grace)), c.cid, timeout=grace + 60, check=False)
            self.box.remove(c)
        self.pods.pop(pod.name, None)
        self.stopped.append(pod)
        if self.api.get(PODS, self.namespace, pod.name) is not None:
            self.api.delete(PODS, self.namespace, pod.name)
        shutil.rmtree(self.workdir / pod.name, ignore_errors=True)

    def _probe(self, pod: Pod) -> None:
        ready = True
        for spec, c in zip(pod.spec["containers"], pod.containers, strict=True):
            if not c.running():  # restartPolicy Always: the kubelet starts it again
                pod.restarts += 1
                self.engine.run("start", c.cid, check=False)
                ready = False
                continue
            probe = spec.get("readinessProbe")
            ready = ready and (probe is None or self._probe_ok(c, spec, probe))
        if ready != pod.ready:
            pod.ready = ready
            self._report(pod)

    @staticmethod
    def _port(container: dict[str, Any], port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        return int(next(p["containerPort"] for p in container.get("ports", []) if p.get("name") == port))

    def _probe_ok(self, c: Container, spec: dict[str, Any], probe: dict[str, Any]) -> bool:
        if "httpGet" in probe:
            get = probe["httpGet"]
            scheme = str(get.get("scheme", "HTTP")).lower()
            return http_ok(f"{scheme}://{LOOPBACK}:{self._port(spec, get['port'])}{get.get('path', '/')}")
        if "tcpSocket" in probe:
            try:
                with socket.create_connection((LOOPBACK, self._port(spec, probe["tcpSocket"]["port"])), 1):
                    return True
            except OSError:
                return False
        if "exec" in probe:
            return c.exec(*probe["exec"]["command"]).returncode == 0
        raise AssertionError(f"the stand-in kubelet cannot run probe {probe}")

    def _report(self, pod: Pod) -> None:
        running = bool(pod.containers) and all(c.running() for c in pod.containers)
        status = {
            "phase": "Running" if running else "Pending", "podIP": LOOPBACK, "hostIP": LOOPBACK,
            "conditions": [{"type": "Ready", "status": "True" if pod.ready else "False"}],
            "containerStatuses": [
                {"name": s["name"], "ready": pod.ready, "restartCount": pod.restarts,
                 "image": s["image"], "imageID": self._image_id(s["image"]),
                 "containerID": f"docker://{c.cid}", "started": running,
                 "state": {"running": {}} if running else {"waiting": {"reason": "ContainerCreating"}}}
                for s, c in zip(pod.spec["containers"], pod.containers, strict=False)],
        }
        self.api.patch(PODS, self.namespace, pod.name, {"status": status}, sub="status")

    # -- one container -------------------------------------------------------------------------------

    def _env(self, pod: Pod, container: dict[str, Any]) -> dict[str, str]:
        fields = {"spec.nodeName": pod.node.name, "metadata.name": pod.name,
                  "metadata.namespace": self.namespace, "status.podIP": LOOPBACK,
                  "status.hostIP": LOOPBACK,
                  "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default")}
        env: dict[str, str] = {}
        for var in container.get("env", []):
            source = var.get("valueFrom") or {}
            if "value" in var or not source:
                env[var["name"]] = expand(str(var.get("value", "")), env)
            elif "fieldRef" in source:
                env[var["name"]] = fields[source["fieldRef"]["fieldPath"]]
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                env[var["name"]] = base64.b64decode(self._secret(ref["name"])[ref["key"]]).decode()
            else:
                raise AssertionError(f"the stand-in kubelet cannot resolve env {var}")
        return env

    def _secret(self, name: str) -> dict[str, str]:
        secret = self.api.get(SECRETS, self.namespace, name)
        if secret is None:
            raise AssertionError(f"Secret {self.namespace}/{name} is mounted or referenced but missing")
        return dict(secret.get("data") or {})

    def _volumes(self, pod: Pod, container: dict[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
        """Bind mounts (host dir, mount path) and tmpfs paths for the container's mounts."""
        volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
        fs_group = (pod.spec.get("securityContext") or {}).get("fsGroup")
        binds: list[tuple[str, str]] = []
        tmpfs: list[str] = []
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            path = mount["mountPath"]
            if "emptyDir" in volume:
                tmpfs.append(path)
            elif "secret" in volume:
                source = volume["secret"]
                data = self._secret(source["secretName"])
                items = source.get("items") or [{"key": k, "path": k} for k in data]
                local = self.workdir / pod.name / mount["name"]
                local.mkdir(parents=True, exist_ok=True)
                local.chmod(0o755)
                for item in items:
                    target = local / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(base64.b64decode(data[item["key"]]))
                    target.chmod(int(item.get("mode", source.get("defaultMode", 0o644))))
                    if fs_group is not None and os.geteuid() == 0:
                        os.chown(target, 0, int(fs_group))
                binds.append((str(local), path))
            else:
                raise AssertionError(f"the stand-in kubelet cannot mount volume {volume}")
        return binds, tmpfs

    def _security(self, pod: Pod, container: dict[str, Any], image: str) -> list[str]:
        pod_sc = pod.spec.get("securityContext") or {}
        sc = container.get("securityContext") or {}
        assert not sc.get("privileged"), "privileged containers are not run here"
        flags: list[str] = []
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        gid = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            effective = uid if uid is not None else self._image_user(image)
            assert str(effective).split(":")[0] not in ("", "0", "root"), \
                f"runAsNonRoot, but the container would run as {effective!r}"
        if uid is not None:
            flags += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
        for group in [pod_sc.get("fsGroup"), *pod_sc.get("supplementalGroups", [])]:
            if group is not None:
                flags += ["--group-add", str(group)]
        if sc.get("readOnlyRootFilesystem"):
            flags.append("--read-only")
        if sc.get("allowPrivilegeEscalation") is False:
            flags += ["--security-opt", "no-new-privileges"]
        caps = sc.get("capabilities") or {}
        flags += [f"--cap-drop={c}" for c in caps.get("drop", [])]
        flags += [f"--cap-add={c}" for c in caps.get("add", [])]
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp == "Unconfined":
            flags += ["--security-opt", "seccomp=unconfined"]
        elif seccomp not in (None, "RuntimeDefault"):
            raise AssertionError(f"the stand-in kubelet cannot apply seccomp profile {seccomp}")
        return flags

    def _image_user(self, image: str) -> str:
        if image not in self._users:
            self._users[image] = self.engine.run(
                "image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
        return self._users[image]

    def _image_id(self, image: str) -> str:
        key = f"id:{image}"
        if key not in self._users:
            self._users[key] = self.engine.image_id(image)
        return self._users[key]

    def _supported(self, image: str, role: str) -> frozenset[str]:
        """The long options of ``grain ROLE`` in the image (asked once per image)."""
        if (image, role) not in self._flags:
            out = self.engine.run("run", "--rm", "--network", "none", "--tmpfs", "/tmp",
                                  "--entrypoint", "grain", image, role, "--help").stdout
            self._flags[image, role] = frozenset(re.findall(r"(--[a-z][a-z0-9-]*)", out))
        return self._flags[image, role]

    def _hosts(self) -> list[str]:
        """--add-host for every Service's DNS names: they are their pods' ports on loopback."""
        flags: list[str] = []
        for svc in self._objects(SERVICES):
            name = svc["metadata"]["name"]
            for host in (f"{name}.{self.namespace}.svc.cluster.local", f"{name}.{self.namespace}.svc",
                         f"{name}.{self.namespace}", name):
                flags += ["--add-host", f"{host}:{LOOPBACK}"]
        return flags

    def _run_container(self, pod: Pod, container: dict[str, Any]) -> Container:
        image = container["image"]
        env = self._env(pod, container)
        command = [expand(a, env) for a in container.get("command", [])]
        args = [expand(a, env) for a in container.get("args", [])]
        if command[:1] == ["grain"] and len(command) >= 2:
            args = flags_translation(command[1], command[2:] + args, self._supported(image, command[1]))
            command = command[:2]
        binds, tmpfs = self._volumes(pod, container)
        limits = (container.get("resources") or {}).get("limits") or {}
        extra = [*self._security(pod, container, image), *self._hosts(), "--hostname", pod.name,
                 "--stop-timeout", str(int(pod.spec.get("terminationGracePeriodSeconds", 30)))]
        if "cpu" in limits:
            extra += ["--cpus", str(cpu_quantity(str(limits["cpu"])))]
        memory = str(memory_bytes(str(limits["memory"]))) if "memory" in limits else None
        return self.box.run(
            f"{pod.name}-{container['name']}", args, image=image,
            entrypoint=command or None, env=env, cpuset=",".join(map(str, pod.node.cpus)),
            memory=memory, hardened=False, tmpfs=tmpfs, mounts=binds, extra=extra)


def _uid(obj: dict[str, Any]) -> str:
    """An object's uid; KMock assigns none, so one derived from its name stands in."""
    meta = obj["metadata"]
    return str(meta.get("uid") or uuid.uuid5(uuid.NAMESPACE_URL, f"{obj['kind']}/{meta['name']}"))


def api_list(api: KMock, resource: str, namespace: str) -> list[dict[str, Any]]:
    """Every live object of a resource in a namespace (KMock's store, deep copies)."""
    import kmock

    wanted = kmock.resource(resource)
    return [json.loads(json.dumps(obj.raw)) for (res, ns, _), obj in list(api.km.objects.items())
            if res == wanted and ns == namespace and not obj.deleted]


def readable_by_image_user(path: Path) -> str:
    """Let the image's user (10001) read ``path`` and nobody else, as a mounted Secret."""
    path.chmod(0o400)
    if os.geteuid() == 0:
        os.chown(path, 10001, 10001)
    return str(path)


def run_operator(box: Containers, api: KMock, workdir: Path, namespace: str, *, liveness: int,
                 args: Sequence[str] = (), extra: Sequence[str] = ()) -> Container:
    """The operator container, as the chart's Deployment runs it: ``python -m grain_operator``
    from the image, hardened, watching ``namespace`` on the emulator (shared host network)."""
    kubeconfig = readable_by_image_user(Path(api.kubeconfig(workdir / "operator-kubeconfig")))
    mount = "/etc/grain-operator/kubeconfig"
    return box.run(
        "operator",
        ["--namespace", namespace, "--kubeconfig", mount,
         "--liveness", f"http://{LOOPBACK}:{liveness}/healthz", "--resync-seconds", "1", *args],
        entrypoint=["python", "-m", "grain_operator"], mounts=[(kubeconfig, mount)],
        env={"GRAIN_OPERATOR_RETRY_DELAY": "1"}, memory="512m", extra=list(extra))


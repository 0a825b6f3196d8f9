"""Pure parts of reconciliation: structural diffs, and the status computed from observations."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from kmock_harness import StatusServer, sample_status

from grain_operator import render, status
from grain_operator.diff import covers, merge_patch
from grain_operator.model import parse_spec

pytestmark = pytest.mark.timeout(30)

OWNER = render.Owner(name="demo", namespace="science")


# -- diff -------------------------------------------------------------------------------------

def test_covers_allows_server_added_fields() -> None:
    desired = {"spec": {"containers": [{"name": "c", "image": "i"}], "replicas": 1}}
    actual = {"spec": {"containers": [{"name": "c", "image": "i", "terminationMessagePath": "/x"}],
                       "replicas": 1, "revisionHistoryLimit": 10}}
    assert covers(desired, actual)
    assert not covers({"spec": {"replicas": 2}}, actual)
    assert not covers({"spec": {"containers": [{"name": "c"}, {"name": "d"}]}}, actual)


def test_covers_compares_resources_as_quantities() -> None:
    assert covers({"resources": {"requests": {"cpu": "1000m", "memory": "1Gi"}}},
                  {"resources": {"requests": {"cpu": "1", "memory": "1073741824"}}})
    assert not covers({"resources": {"limits": {"cpu": "2"}}}, {"resources": {"limits": {"cpu": "1"}}})
    assert not covers({"env": "1000m"}, {"env": "1"})  # only under resources


def test_merge_patch_is_empty_when_nothing_changed() -> None:
    desired = {"metadata": {"labels": {"a": "1"}}, "spec": {"x": [1, 2]}}
    actual = {"metadata": {"labels": {"a": "1", "b": "2"}, "uid": "u"}, "spec": {"x": [1, 2]}, "status": {}}
    assert merge_patch(desired, desired, actual) == {}


def test_merge_patch_sets_changes_and_removes_what_was_dropped() -> None:
    last = {"spec": {"nodeSelector": {"a": "1", "b": "2"}, "image": "old"}}
    desired = {"spec": {"nodeSelector": {"a": "1"}, "image": "new"}}
    actual = {"spec": {"nodeSelector": {"a": "1", "b": "2", "c": "3"}, "image": "old", "defaulted": True}}
    assert merge_patch(last, desired, actual) == {"spec": {"nodeSelector": {"b": None}, "image": "new"}}


def test_merge_patch_replaces_lists_whole() -> None:
    desired = {"args": ["--a", "2"]}
    assert merge_patch({}, desired, {"args": ["--a", "1"]}) == {"args": ["--a", "2"]}


# -- status -----------------------------------------------------------------------------------

def spec_of(raw: dict[str, Any]) -> Any:
    spec, problems = parse_spec(raw)
    assert spec is not None and not problems
    return spec


def ready_obs(**kw: Any) -> status.Observation:
    base: dict[str, Any] = {
        "deployment": {"status": {"availableReplicas": 1}},
        "daemonset": {"status": {"desiredNumberScheduled": 2, "numberReady": 2}},
        "service": {"spec": {"ports": [{"name": "grain", "port": 4242, "nodePort": 31042}]}},
        "executor_status": sample_status(workers=2),
        "users": [("default", "demo-token", 1.0)],
    }
    base.update(kw)
    return status.Observation(**base)


def conditions(st: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


def test_running() -> None:
    st = status.compute_status(OWNER, spec_of({}), ready_obs(), generation=4, now="T0")
    assert st["phase"] == "Running"
    assert conditions(st) == {"SpecValid": ("True", "Valid"), "CredentialsReady": ("True", "Ready"),
                              "ExecutorReady": ("True", "Ready"),
                              "WorkersReady": ("True", "AllReady"), "Degraded": ("False", "AsExpected")}
    assert all(c["observedGeneration"] == 4 and c["lastTransitionTime"] == "T0" for c in st["conditions"])
    assert st["observedGeneration"] == 4
    assert st["workers"] == {"desired": 2, "ready": 2, "registered": 2, "summary": "2/2", "nodes": [
        {"name": "node-0", "cpuset": "2-5", "exclusive": True, "coresTotal": 4, "coresFree": 2, "runningJobs": 2},
        {"name": "node-1", "cpuset": "2-5", "exclusive": True, "coresTotal": 4, "coresFree": 2, "runningJobs": 2},
    ]}
    assert st["cores"] == {"total": 8, "free": 4, "summary": "4/8"}
    assert st["memory"] == {"totalGB": 32.0, "freeGB": 16.0}
    assert st["queueLength"] == 3 and st["tokenSecret"] == "demo-token"
    assert st["endpoints"] == {
        "inCluster": "grain://demo-executor.science.svc:4242",
        "tlsServerName": "demo-executor.science.svc",
        "dashboard": "kubectl -n science port-forward svc/demo-executor 8080, then http://localhost:8080/",
    }
    # an executor without per-user figures: the users of the spec, with zeros
    assert st["users"] == [{"name": "default", "secretName": "demo-token", "weight": 1.0, "runningJobs": 0,
                            "queuedJobs": 0, "coresInUse": 0, "share": 0.0}]
    assert "recovering" not in st and "Recovering" not in conditions(st)


def test_pending_while_the_executor_is_not_ready() -> None:
    st = status.compute_status(OWNER, spec_of({}), status.Observation(), generation=1)
    assert st["phase"] == "Pending"
    assert conditions(st)["ExecutorReady"] == ("False", "NotCreated")
    obs = ready_obs(deployment={"status": {}}, executor_status=None, executor_error="refused")
    st = status.compute_status(OWNER, spec_of({}), obs, generation=1)
    assert st["phase"] == "Pending" and conditions(st)["ExecutorReady"] == ("False", "DeploymentNotReady")


def test_unreachable_status_says_why() -> None:
    obs = ready_obs(executor_status=None, executor_error="GET http://x/status: ClientConnectorError")
    st = status.compute_status(OWNER, spec_of({}), obs, generation=1)
    executor = next(c for c in st["conditions"] if c["type"] == "ExecutorReady")
    assert executor["status"] == "False" and executor["reason"] == "StatusUnreachable"
    assert "ClientConnectorError" in executor["message"]
    assert st["phase"] == "Degraded" and conditions(st)["Degraded"] == ("True", "ExecutorStatusUnreachable")


def test_degraded_when_some_workers_are_missing() -> None:
    obs = ready_obs(daemonset={"status": {"desiredNumberScheduled": 3, "numberReady": 2}})
    st = status.compute_status(OWNER, spec_of({}), obs, generation=1)
    assert st["phase"] == "Degraded" and st["workers"]["summary"] == "2/3"
    assert conditions(st)["WorkersReady"] == ("False", "PodsNotReady")
    obs = ready_obs(executor_status=sample_status(workers=1))
    st = status.compute_status(OWNER, spec_of({}), obs, generation=1)
    assert conditions(st)["WorkersReady"] == ("False", "NotRegistered")


def test_no_matching_nodes_is_pending() -> None:
    obs = ready_obs(daemonset={"status": {"desiredNumberScheduled": 0, "numberReady": 0}},
                    executor_status=sample_status(workers=0))
    st = status.compute_status(OWNER, spec_of({}), obs, generation=1)
    assert st["phase"] == "Pending" and conditions(st)["WorkersReady"] == ("False", "NoMatchingNodes")
    assert "nodeSelector" in st["message"]


def test_exclusive_cpus_not_in_force_is_said() -> None:
    spec = spec_of({"workers": {"cpus": 4, "memory": "8Gi", "exclusiveCpus": True}})
    st = status.compute_status(OWNER, spec, ready_obs(executor_status=sample_status(exclusive=False)), generation=1)
    assert conditions(st)["ExclusiveCpus"] == ("False", "StaticCPUManagerNotInForce")
    cond = next(c for c in st["conditions"] if c["type"] == "ExclusiveCpus")
    assert "static CPU manager" in cond["message"] and "node-0" in cond["message"]
    assert st["phase"] == "Degraded" and conditions(st)["Degraded"] == ("True", "CoresNotExclusive")
    st = status.compute_status(OWNER, spec, ready_obs(), generation=1)
    assert conditions(st)["ExclusiveCpus"] == ("True", "Exclusive") and st["phase"] == "Running"
    st = status.compute_status(OWNER, spec_of({}), ready_obs(executor_status=sample_status(exclusive=False)),
                               generation=1)
    assert "ExclusiveCpus" not in conditions(st)  # not asked, not judged


def test_invalid_spec_is_failed_and_names_the_field() -> None:
    spec, problems = parse_spec({"workers": {"cpus": 2, "reserveCores": 2}})
    st = status.compute_status(OWNER, spec, status.Observation(), generation=7, problems=problems)
    assert st["phase"] == "Failed"
    cond = next(c for c in st["conditions"] if c["type"] == "SpecValid")
    assert cond["status"] == "False" and cond["reason"] == "InvalidSpec" and cond["observedGeneration"] == 7
    assert "spec.workers.reserveCores" in cond["message"]


@pytest.mark.parametrize(("raw", "obs_kw", "external"), [
    ({"executor": {"serviceType": "NodePort"}}, {"executor_host_ip": "10.1.2.3"}, "grain://10.1.2.3:31042"),
    ({"executor": {"serviceType": "NodePort", "externalHost": "grain.example.org"}}, {}, "grain://grain.example.org:31042"),
    ({"executor": {"serviceType": "LoadBalancer"}},
     {"service": {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}}, "grain://203.0.113.7:4242"),
    ({"executor": {"serviceType": "LoadBalancer"}}, {"service": {"status": {}}}, None),
])
def test_external_endpoint(raw: dict[str, Any], obs_kw: dict[str, Any], external: str | None) -> None:
    st = status.compute_status(OWNER, spec_of(raw), ready_obs(**obs_kw), generation=1)
    assert st["endpoints"].get("external") == external


def test_transition_time_kept_while_status_unchanged() -> None:
    first = status.compute_status(OWNER, spec_of({}), ready_obs(), generation=1, now="T0")
    again = status.compute_status(OWNER, spec_of({}), ready_obs(), generation=1, previous=first, now="T1")
    assert again == first
    assert status.status_patch(again, first) == {}
    worse = status.compute_status(OWNER, spec_of({}), ready_obs(executor_status=None, executor_error="x"),
                                  generation=1, previous=first, now="T2")
    times = {c["type"]: c["lastTransitionTime"] for c in worse["conditions"]}
    assert times["ExecutorReady"] == "T2" and times["SpecValid"] == "T0"


def test_status_patch_removes_vanished_fields() -> None:
    old = status.compute_status(OWNER, spec_of({"executor": {"serviceType": "NodePort"}}),
                                ready_obs(executor_host_ip="10.0.0.1"), generation=1, now="T")
    new = status.compute_status(OWNER, spec_of({}), ready_obs(), generation=1, previous=old, now="T")
    patch = status.status_patch(new, {**old, "foreign": 1})
    assert patch["endpoints"] == {"external": None}
    assert "foreign" not in patch


def test_compact_cpuset() -> None:
    assert status.compact_cpuset([5, 2, 3, 4, 8, 10, 11]) == "2-5,8,10-11"
    assert status.compact_cpuset([]) == "" and status.compact_cpuset([0]) == "0"


def test_fetch_executor_status_from_a_real_http_server() -> None:
    with StatusServer(sample_status(workers=1)) as server:
        data, err = status.fetch_executor_status(server.url, timeout=2)
        assert err is None and data is not None and data["queue_length"] == 3
        server.payload = None  # /status answers 503
        data, err = status.fetch_executor_status(server.url, timeout=2)
        assert data is None and err is not None and "503" in err


def test_fetch_executor_status_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connection refused
        data, err = status.fetch_executor_status(f"http://127.0.0.1:{port}/status", timeout=1)
    assert data is None and err is not None and f"127.0.0.1:{port}" in err


def test_users_and_their_share_from_the_executor() -> None:
    users = [("alice", "demo-user-alice", 2.0), ("bob", "demo-user-bob", 1.0)]
    reported = [{"name": "alice", "weight": 2.0, "running_jobs": 6, "queued_jobs": 2900, "cores_in_use": 6,
                 "share": 0.751}, {"name": "carol", "running_jobs": 1}]  # carol: not in the spec (any more)
    st = status.compute_status(OWNER, spec_of({}), ready_obs(users=users,
                               executor_status=sample_status(users=reported)), generation=1)
    assert st["users"] == [
        {"name": "alice", "secretName": "demo-user-alice", "weight": 2.0, "runningJobs": 6, "queuedJobs": 2900,
         "coresInUse": 6, "share": 0.751},
        {"name": "bob", "secretName": "demo-user-bob", "weight": 1.0, "runningJobs": 0, "queuedJobs": 0,
         "coresInUse": 0, "share": 0.0},
    ]
    assert "tokenSecret" not in st  # no user 'default'
    # nonsense from a peer does not break the status
    odd = sample_status(users=[{"name": "alice", "running_jobs": "many", "share": None}, "junk"])
    st = status.compute_status(OWNER, spec_of({}), ready_obs(users=users, executor_status=odd), generation=1)
    assert st["users"][0]["runningJobs"] == 0


def test_recovering_executor_is_degraded_and_says_what_it_waits_for() -> None:
    rec = {"waiting_for_workers": {"node-1": 3, "node-2": 1}, "jobs_held_back": 0,
           "jobs_waiting_for_their_client": 5, "sessions_waiting_for_their_client": 2}
    st = status.compute_status(OWNER, spec_of({}), ready_obs(executor_status=sample_status(recovering=rec)),
                               generation=1)
    assert st["recovering"] == ("waiting for workers: node-1 (3), node-2 (1); jobs waiting for their client: 5; "
                                "sessions waiting for their client: 2")  # zeros left out
    assert conditions(st)["Recovering"] == ("True", "RebuildingState")
    assert st["phase"] == "Degraded" and "recovering" in st["message"]
    st = status.compute_status(OWNER, spec_of({}), ready_obs(executor_status=sample_status(recovering=None)),
                               generation=1, previous=st)
    assert "Recovering" not in conditions(st) and st["phase"] == "Running"
    assert status.status_patch(st, {**st, "recovering": "x"})["recovering"] is None  # cleared


def test_credential_problems_are_shown() -> None:
    obs = ready_obs(credential_problems=["spec.users[bob].secretName: Secret 'b' is not labelled grain.dev/cluster=demo"])
    st = status.compute_status(OWNER, spec_of({}), obs, generation=1)
    assert conditions(st)["CredentialsReady"] == ("False", "SecretNotUsable")
    assert st["phase"] == "Degraded" and "not labelled" in st["message"]
    obs = status.Observation(credential_problems=["Secret 'demo-tls' exists and is not this GrainCluster's"])
    st = status.compute_status(OWNER, spec_of({}), obs, generation=1)
    assert st["phase"] == "Pending" and "demo-tls" in st["message"]

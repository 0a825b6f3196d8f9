"""manifests/ is generated from the chart: a drift test, and the files are valid."""

from __future__ import annotations

import kubernetes_validate
import yaml

from .chart_tools import KUBE_VERSION, ROOT, check_against_crd, load_script


def test_committed_manifests_match_the_chart():
    stale = load_script().drifted()
    assert not stale, f"{stale} differ from what charts/grain renders: run `make manifests`"


def test_manifests_validate_strictly():
    script = load_script()
    for name in script.build_manifests():
        for obj in yaml.safe_load_all((ROOT / "manifests" / name).read_text()):
            if obj and obj["kind"] != "GrainCluster":
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_operator_manifest_creates_its_namespace_first():
    docs = list(yaml.safe_load_all((ROOT / "manifests" / "operator.yaml").read_text()))
    assert docs[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "grain-system", "labels": {"app.kubernetes.io/part-of": "grain"}},
    }
    assert all(d["metadata"]["namespace"] == "grain-system" for d in docs[1:])
    assert all("helm.sh/chart" not in d["metadata"].get("labels", {}) for d in docs)


def test_sample_graincluster_has_no_namespace_and_matches_crd():
    (grc,) = yaml.safe_load_all(
        (ROOT / "manifests" / "examples" / "graincluster-sample.yaml").read_text()
    )
    assert grc["kind"] == "GrainCluster" and "namespace" not in grc["metadata"]
    check_against_crd(grc)

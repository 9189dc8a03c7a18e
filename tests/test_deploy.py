"""deploy/: the Kubernetes manifests and the image, checked against a generated repository and the model's metrics."""

import re
from pathlib import Path

import pytest

from leap_export.triton.repository import MODEL_NAME, TEMPLATE, write_repository

yaml = pytest.importorskip("yaml")
ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes" / "leap-encoder.yaml"


def _docs() -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d}


def _container() -> dict:
    return _docs()["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def test_the_image_and_the_deployment_agree_on_the_repository(tiny_artifacts, tmp_path):
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    source, models = re.search(r"^COPY (\S+) (\S+)$", dockerfile, flags=re.M).groups()
    assert f"--model-repository={models}" in _container()["args"]
    assert '"numpy<2"' in dockerfile  # the stub crashes on string inputs with numpy 2
    # what `leap-export triton ART --out repository` writes is what the image copies
    repo = write_repository(tiny_artifacts["bert"], tmp_path / source)
    config = (repo / MODEL_NAME / "config.pbtxt").read_text()
    assert "kind: KIND_CPU" in config and '{ key: "threads" value: { string_value: "auto" } }' in config
    limits = _container()["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits and float(limits["cpu"]) >= 1  # threads follow the CPU quota


def test_ports_probes_and_service_match_the_server():
    from leap_export.commands.serve import command as serve

    defaults = {p.name: p.default for p in serve.params}
    ports = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    assert ports == {
        "http": defaults["http_port"],
        "grpc": defaults["grpc_port"],
        "metrics": defaults["metrics_port"],
    }
    for probe in ("startupProbe", "readinessProbe"):
        assert _container()[probe]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    docs = _docs()
    pod = docs["Deployment"]["spec"]["template"]["metadata"]
    assert pod["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    assert docs["Service"]["spec"]["selector"] == pod["labels"]
    assert {p["targetPort"] for p in docs["Service"]["spec"]["ports"]} == set(ports)
    assert (
        docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"]
        == docs["Deployment"]["metadata"]["name"]
    )


def test_alert_rules_use_only_metrics_the_server_has_and_match_the_docs():
    families = dict(
        re.findall(
            r'MetricFamily\(\s*"(leap_\w+)",\s*"[^"]*",\s*(counter|gauge|histogram)', TEMPLATE.read_text()
        )
    )
    assert set(families) >= {"leap_exits_total", "leap_exit_layer", "leap_shadow_cosine", "leap_exit_score"}
    rules = _docs()["PrometheusRule"]["spec"]["groups"]
    recorded = {r["record"] for g in rules for r in g["rules"] if "record" in r}
    for group in rules:
        for rule in group["rules"]:
            for name in re.findall(r"\b(leap_\w+|nv_\w+)", re.sub(r"\{[^}]*\}", "", rule["expr"])):
                if name.startswith("nv_"):
                    continue
                base = re.sub(r"_(sum|count|bucket)$", "", name)
                assert name in families or families.get(base) == "histogram", f"{rule}: no metric {name}"
            assert set(re.findall(r"\b(leap:[\w:]+)", rule["expr"])) <= recorded
            assert set(re.findall(r'model="(\w+)"', rule["expr"])) <= {MODEL_NAME}
    block = re.search(r"```yaml\n(groups:.*?)```", (ROOT / "docs" / "deploy.md").read_text(), flags=re.S)[1]
    assert yaml.safe_load(block)["groups"] == rules, (
        "docs/deploy.md's alert rules differ from deploy/kubernetes"
    )

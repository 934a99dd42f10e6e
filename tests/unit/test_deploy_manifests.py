"""deploy/kubernetes against the code: the manifests were never applied here (no cluster, no
GPU), so this checks what can be checked without one. The router's and build-gpu-repo's
arguments parse with the real `t2i-router` parser, the router's environment names
`RouterConfig` fields, ports and Service names agree across manifests, and the Redis settings the
shared budget relies on are there. docs/operations.md names every flag of `serve`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import yaml

from t2i_router.cli import build_parser
from t2i_router.router.config import ENV_PREFIX, RouterConfig
from t2i_router.router.types import Limits
from t2i_router.triton.channel import server_keepalive_flags

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"


def documents() -> list[dict]:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((KUBE / name).read_text()) if d]
    return docs


DOCS = documents()


def find(kind: str, name: str) -> dict:
    found = [d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod(kind: str, name: str) -> dict:
    return find(kind, name)["spec"]["template"]["spec"]


def ports(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def test_every_manifest_is_in_the_kustomization_and_in_one_namespace() -> None:
    listed = set(yaml.safe_load((KUBE / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert {d["metadata"].get("namespace", "t2i") for d in DOCS} == {"t2i"}


def test_the_router_arguments_parse_and_agree_with_its_ports_and_mounts() -> None:
    spec = pod("Deployment", "t2i-router")
    (router,) = spec["containers"]
    args = [*router["command"][1:], *router["args"]]
    assert router["command"][0] == "t2i-router"
    parsed = build_parser().parse_args(args)  # an unknown flag exits here
    assert parsed.func.__name__ == "cmd_serve"
    assert ports(router) == {"grpc": int(flag(args, "--port")), "metrics": parsed.metrics_port}
    assert parsed.host == "0.0.0.0" and parsed.metrics_host == "0.0.0.0"
    mounts = {m["name"]: m["mountPath"] for m in router["volumeMounts"]}
    volumes = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"]}
    assert str(parsed.tls_cert).startswith(mounts["tls"] + "/") and volumes["tls"]
    assert str(parsed.token_file).startswith(mounts["tokens"] + "/")
    assert str(parsed.admin_token_file).startswith(mounts["tokens"] + "/")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert router[probe]["tcpSocket"]["port"] == "grpc"


def test_the_router_environment_names_config_fields_and_makes_a_valid_config() -> None:
    (router,) = pod("Deployment", "t2i-router")["containers"]
    fields = {f.name for f in dataclasses.fields(RouterConfig)} | {
        f.name for f in dataclasses.fields(Limits)
    }
    environ = {}
    for var in router["env"]:
        if not var["name"].startswith(ENV_PREFIX):
            continue
        assert var["name"].removeprefix(ENV_PREFIX).lower() in fields, var["name"]
        environ[var["name"]] = var.get("value", "redis://:secret@redis:6379/0")
    assert "T2I_ROUTER_BUDGET_STORE" in environ  # the replicas share one budget
    assert (
        "secretKeyRef"
        in next(v for v in router["env"] if v["name"].endswith("BUDGET_STORE"))["valueFrom"]
    )
    config = RouterConfig.from_env(environ, host="0.0.0.0", tls_cert=Path("c"), tls_key=Path("k"))
    assert config.budget_store.startswith("redis://") and config.budget_key_prefix


def test_services_select_their_pods_and_name_their_ports() -> None:
    for name, kind in (
        ("t2i-router", "Deployment"),
        ("triton", "Deployment"),
        ("redis", "StatefulSet"),
    ):
        service = find("Service", name)
        template = find(kind, name)["spec"]["template"]
        assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
        named = set().union(*(ports(c) for c in template["spec"]["containers"]))
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= named, name
    assert find("Service", "t2i-router")["spec"]["clusterIP"] == "None"  # headless: round_robin


def test_the_router_reaches_triton_where_triton_serves() -> None:
    (router,) = pod("Deployment", "t2i-router")["containers"]
    host, port = flag(router["args"], "--triton-url").split(":")
    triton_service = find("Service", host)
    grpc_port = next(p for p in triton_service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_port["port"] == int(port)
    (server,) = pod("Deployment", "triton")["containers"]
    assert f"--grpc-port={ports(server)['grpc']}" in server["args"]
    # Triton accepts the router's keepalive pings instead of cutting it off (too_many_pings)
    assert set(server_keepalive_flags()) <= set(server["args"])


def test_triton_builds_the_tensorrt_repository_it_serves() -> None:
    spec = pod("Deployment", "triton")
    (build,) = spec["initContainers"]
    parsed = build_parser().parse_args(build["args"][1:])
    assert build["args"][:3] == ["t2i-router", "triton", "build-gpu-repo"]
    assert parsed.max_batch_size == 64
    (server,) = spec["containers"]
    assert f"--model-repository={parsed.out}" in server["args"]
    assert build["image"] == server["image"]
    for container in (build, server):
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    dockerfile = (ROOT / "deploy" / "docker" / "triton.Dockerfile").read_text()
    assert "FROM nvcr.io/nvidia/tritonserver:" in dockerfile


def test_redis_keeps_the_shared_budget_across_restarts() -> None:
    (redis,) = pod("StatefulSet", "redis")["containers"]
    args = redis["args"]
    assert flag(args, "--appendonly") == "yes" and flag(args, "--maxmemory-policy") == "noeviction"
    assert "--requirepass" in args
    claim = find("StatefulSet", "redis")["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] in {m["name"] for m in redis["volumeMounts"]}


@pytest.mark.parametrize(
    "option",
    [
        o
        for a in serve_parser()._actions
        for o in a.option_strings
        if o.startswith("--") and o != "--help"
    ],
)
def test_operations_doc_names_every_serve_flag(option: str) -> None:
    assert f"`{option}`" in (ROOT / "docs" / "operations.md").read_text()

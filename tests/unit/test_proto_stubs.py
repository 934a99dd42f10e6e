"""The committed client stubs match the .proto, and the API keeps the names clients rely on."""

from __future__ import annotations

from pathlib import Path

import grpc

from t2i_router_client import SERVICE_NAME, codegen, router_pb2, router_pb2_grpc


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    written = codegen.generate(tmp_path)
    assert [p.name for p in written] == list(codegen.GENERATED_FILES)
    for path in written:
        committed = codegen.PACKAGE_DIR / path.name
        assert path.read_text() == committed.read_text(), (
            f"{committed} is stale: run `make proto` and commit the result"
        )


def test_grpc_stub_imports_its_messages_relative_to_the_package() -> None:
    source = (codegen.PACKAGE_DIR / "router_pb2_grpc.py").read_text()
    assert "from . import router_pb2 as" in source
    assert "from t2i_router.v1 import" not in source
    assert router_pb2_grpc.t2i__router_dot_v1_dot_router__pb2 is router_pb2


def test_service_keeps_its_name_and_every_rpc() -> None:
    service = router_pb2.DESCRIPTOR.services_by_name["Router"]
    assert service.full_name == SERVICE_NAME == "t2i_router.v1.Router"
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {"Generate", "GenerateBatch", "Route", "GetBudget", "SetBudget"}
    assert methods["GenerateBatch"].server_streaming  # results stream back as they are ready
    assert not methods["Route"].server_streaming
    assert router_pb2.DESCRIPTOR.package == "t2i_router.v1"
    assert router_pb2.DESCRIPTOR.name == "t2i_router/v1/router.proto"


def test_messages_keep_the_field_names_clients_rely_on() -> None:
    request = router_pb2.RouteRequest(prompts=["a red circle", "two blue squares"], dry_run=True)
    decision = router_pb2.RouteDecision(engine="cloud_large", steps=20, score=0.04, counted=True)
    decision.evaluations.add(choice="edge_small@8", engine="edge_small", steps=8, cost=1.0)
    decision.evaluations[0].predicted_quality["count"] = 0.75
    reply = router_pb2.RouteResponse(decisions=[decision])
    budget = router_pb2.GetBudgetResponse(running_rate=0.31, target_rate=0.3, multiplier=0.02)
    budget.decisions = 1000
    budget.since.FromSeconds(1_700_000_000)
    assert list(request.prompts) == ["a red circle", "two blue squares"] and request.dry_run
    assert reply.decisions[0].engine == "cloud_large" and reply.decisions[0].counted
    assert reply.decisions[0].evaluations[0].predicted_quality["count"] == 0.75
    assert router_pb2.SetBudgetRequest(target_rate=0.3).HasField("target_rate")
    assert not router_pb2.SetBudgetRequest().HasField("target_rate")
    assert budget.decisions == 1000 and budget.since.seconds == 1_700_000_000
    again = router_pb2.RouteResponse.FromString(reply.SerializeToString())
    assert again == reply


def test_target_zero_value_is_unspecified_and_steps_and_guidance_are_optional() -> None:
    request = router_pb2.GenerateRequest(prompt="a red circle", seed=3)
    assert request.target == router_pb2.TARGET_UNSPECIFIED == 0
    assert router_pb2.Target.Name(router_pb2.TARGET_CLOUD) == "TARGET_CLOUD"
    assert not request.HasField("steps") and not request.HasField("guidance")
    request.steps = 0  # an explicit 0 is distinguishable from unset
    assert request.HasField("steps")


def test_batch_results_carry_their_index_and_either_an_image_or_an_error() -> None:
    ok = router_pb2.GenerateBatchResult(index=2, result=router_pb2.GenerateResponse(png=b"x"))
    failed = router_pb2.GenerateBatchResult(
        index=5, error=router_pb2.ItemError(code="INVALID_ARGUMENT", message="unknown word 'cat'")
    )
    assert ok.WhichOneof("outcome") == "result" and ok.index == 2
    assert failed.WhichOneof("outcome") == "error" and failed.index == 5


def test_every_message_field_rpc_and_enum_value_is_commented() -> None:
    proto = (codegen.REPO_ROOT / "proto" / codegen.PROTO_FILE).read_text().splitlines()
    uncommented = []
    for i, line in enumerate(proto):
        text = line.strip()
        declares = text.startswith(("rpc ", "message ", "enum ", "service ", "oneof ")) or (
            text.endswith(";") and "=" in text and not text.startswith(("syntax", "option"))
        )
        if declares and not proto[i - 1].strip().startswith("//"):
            uncommented.append(text)
    assert uncommented == []


def test_grpc_stub_builds_on_a_channel() -> None:
    with grpc.insecure_channel("127.0.0.1:1") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        assert callable(stub.Route) and callable(stub.GenerateBatch)

"""Python client stubs of the t2i-router gRPC API (``t2i_router.v1``).

The stubs are generated from ``proto/t2i_router/v1/router.proto`` by
``python -m t2i_router_client.codegen`` (``make proto``) and committed; do not edit them.

    import grpc
    from t2i_router_client import router_pb2, router_pb2_grpc

    with grpc.insecure_channel("127.0.0.1:50051") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        reply = stub.Route(router_pb2.RouteRequest(prompts=["a red circle"], dry_run=True))
        print(reply.decisions[0].engine, reply.decisions[0].score)

The stub modules are not imported here, so that the generator runs even when they are missing
or stale; import them by name as above.
"""

__all__ = ["SERVICE_NAME"]

#: Fully qualified name of the service, as grpc health checks and reflection see it.
SERVICE_NAME = "t2i_router.v1.Router"

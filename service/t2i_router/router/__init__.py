"""The router: routing policy, budget control, micro-batching, the core, and its gRPC edge.

Pure core (imports neither grpc nor tritonclient, tested without servers):
- `policy`: predicted quality Q (N, M, K) -> utilities, the routing score, and the decision
  argmax_m u_m - lambda * c_m / c_scale over M choices (score and decision kept apart).
- `budget`: the BudgetController that moves lambda to hold a target cloud rate or average cost;
  `budget_store`: its state, the pure transitions, and the local (memory/file) store.
- `batching`: an asyncio MicroBatcher that gathers requests into one call of a batch function.
- `estimator`: the `Estimator` seam (in-process adapter, Triton adapter over a duck-typed client).
- `core` and `types`: the `Router` (estimate -> decide -> count -> generate) and its data types.
- `metrics`: Prometheus metrics in a registry of their own.

Edges: `servicer` (the grpc.aio servicer, converting messages only), `server` (config, assembly,
health, reflection, shutdown), `cli` (``t2i-router serve | generate | route | budget``),
`budget_redis` (the budget state shared by replicas in Redis) and `redis_server` (a local
redis-server for tests and benchmarks).
"""

"""The router's core: routing policy, budget control and micro-batching (no grpc, no Triton).

- `policy`: predicted quality Q (N, M, K) -> utilities, the routing score, and the decision
  argmax_m u_m - lambda * c_m / c_scale over M choices (score and decision kept apart).
- `budget`: the BudgetController that moves lambda to hold a target cloud rate or average cost.
- `batching`: an asyncio MicroBatcher that gathers requests into one call of a batch function.

The gRPC servicer, Triton clients and the `serve` command build on these; this package imports
neither grpc nor tritonclient, so it is tested without servers.
"""

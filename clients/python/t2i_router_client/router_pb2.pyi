import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Target(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TARGET_UNSPECIFIED: _ClassVar[Target]
    TARGET_AUTO: _ClassVar[Target]
    TARGET_EDGE: _ClassVar[Target]
    TARGET_CLOUD: _ClassVar[Target]

class BudgetMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUDGET_MODE_UNSPECIFIED: _ClassVar[BudgetMode]
    BUDGET_MODE_RATE: _ClassVar[BudgetMode]
    BUDGET_MODE_COST: _ClassVar[BudgetMode]
TARGET_UNSPECIFIED: Target
TARGET_AUTO: Target
TARGET_EDGE: Target
TARGET_CLOUD: Target
BUDGET_MODE_UNSPECIFIED: BudgetMode
BUDGET_MODE_RATE: BudgetMode
BUDGET_MODE_COST: BudgetMode

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "seed", "steps", "guidance", "target")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    seed: int
    steps: int
    guidance: float
    target: Target
    def __init__(self, prompt: _Optional[str] = ..., seed: _Optional[int] = ..., steps: _Optional[int] = ..., guidance: _Optional[float] = ..., target: _Optional[_Union[Target, str]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("png", "decision", "width", "height")
    PNG_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    decision: RouteDecision
    width: int
    height: int
    def __init__(self, png: _Optional[bytes] = ..., decision: _Optional[_Union[RouteDecision, _Mapping]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class GenerateBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[GenerateRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[GenerateRequest, _Mapping]]] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class GenerateBatchResult(_message.Message):
    __slots__ = ("index", "result", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    result: GenerateResponse
    error: ItemError
    def __init__(self, index: _Optional[int] = ..., result: _Optional[_Union[GenerateResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("prompts", "dry_run", "target")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedScalarFieldContainer[str]
    dry_run: bool
    target: Target
    def __init__(self, prompts: _Optional[_Iterable[str]] = ..., dry_run: _Optional[bool] = ..., target: _Optional[_Union[Target, str]] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[RouteDecision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[RouteDecision, _Mapping]]] = ...) -> None: ...

class ChoiceEvaluation(_message.Message):
    __slots__ = ("choice", "engine", "steps", "cost", "predicted_quality", "utility", "objective")
    class PredictedQualityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CHOICE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_QUALITY_FIELD_NUMBER: _ClassVar[int]
    UTILITY_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    choice: str
    engine: str
    steps: int
    cost: float
    predicted_quality: _containers.ScalarMap[str, float]
    utility: float
    objective: float
    def __init__(self, choice: _Optional[str] = ..., engine: _Optional[str] = ..., steps: _Optional[int] = ..., cost: _Optional[float] = ..., predicted_quality: _Optional[_Mapping[str, float]] = ..., utility: _Optional[float] = ..., objective: _Optional[float] = ...) -> None: ...

class StageTimings(_message.Message):
    __slots__ = ("queue_ms", "estimate_ms", "decide_ms", "generate_ms", "encode_ms", "total_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_MS_FIELD_NUMBER: _ClassVar[int]
    DECIDE_MS_FIELD_NUMBER: _ClassVar[int]
    GENERATE_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    estimate_ms: float
    decide_ms: float
    generate_ms: float
    encode_ms: float
    total_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., estimate_ms: _Optional[float] = ..., decide_ms: _Optional[float] = ..., generate_ms: _Optional[float] = ..., encode_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class RouteDecision(_message.Message):
    __slots__ = ("engine", "steps", "score", "counted", "choice", "evaluations", "utility_gap", "multiplier", "cost", "timings", "forced", "fallback", "index")
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    COUNTED_FIELD_NUMBER: _ClassVar[int]
    CHOICE_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    UTILITY_GAP_FIELD_NUMBER: _ClassVar[int]
    MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    engine: str
    steps: int
    score: float
    counted: bool
    choice: str
    evaluations: _containers.RepeatedCompositeFieldContainer[ChoiceEvaluation]
    utility_gap: float
    multiplier: float
    cost: float
    timings: StageTimings
    forced: bool
    fallback: bool
    index: int
    def __init__(self, engine: _Optional[str] = ..., steps: _Optional[int] = ..., score: _Optional[float] = ..., counted: _Optional[bool] = ..., choice: _Optional[str] = ..., evaluations: _Optional[_Iterable[_Union[ChoiceEvaluation, _Mapping]]] = ..., utility_gap: _Optional[float] = ..., multiplier: _Optional[float] = ..., cost: _Optional[float] = ..., timings: _Optional[_Union[StageTimings, _Mapping]] = ..., forced: _Optional[bool] = ..., fallback: _Optional[bool] = ..., index: _Optional[int] = ...) -> None: ...

class GetBudgetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetBudgetResponse(_message.Message):
    __slots__ = ("mode", "target_rate", "target_cost", "running_rate", "running_cost", "multiplier", "eta", "lambda_max", "decisions", "cloud_decisions", "uncounted_decisions", "since", "cost_scale", "warm_started", "persisted", "correction")
    MODE_FIELD_NUMBER: _ClassVar[int]
    TARGET_RATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_COST_FIELD_NUMBER: _ClassVar[int]
    RUNNING_RATE_FIELD_NUMBER: _ClassVar[int]
    RUNNING_COST_FIELD_NUMBER: _ClassVar[int]
    MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    LAMBDA_MAX_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    CLOUD_DECISIONS_FIELD_NUMBER: _ClassVar[int]
    UNCOUNTED_DECISIONS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    COST_SCALE_FIELD_NUMBER: _ClassVar[int]
    WARM_STARTED_FIELD_NUMBER: _ClassVar[int]
    PERSISTED_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_FIELD_NUMBER: _ClassVar[int]
    mode: BudgetMode
    target_rate: float
    target_cost: float
    running_rate: float
    running_cost: float
    multiplier: float
    eta: float
    lambda_max: float
    decisions: int
    cloud_decisions: int
    uncounted_decisions: int
    since: _timestamp_pb2.Timestamp
    cost_scale: float
    warm_started: bool
    persisted: bool
    correction: float
    def __init__(self, mode: _Optional[_Union[BudgetMode, str]] = ..., target_rate: _Optional[float] = ..., target_cost: _Optional[float] = ..., running_rate: _Optional[float] = ..., running_cost: _Optional[float] = ..., multiplier: _Optional[float] = ..., eta: _Optional[float] = ..., lambda_max: _Optional[float] = ..., decisions: _Optional[int] = ..., cloud_decisions: _Optional[int] = ..., uncounted_decisions: _Optional[int] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cost_scale: _Optional[float] = ..., warm_started: _Optional[bool] = ..., persisted: _Optional[bool] = ..., correction: _Optional[float] = ...) -> None: ...

class SetBudgetRequest(_message.Message):
    __slots__ = ("target_rate", "target_cost", "eta", "multiplier", "lambda_max")
    TARGET_RATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_COST_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    LAMBDA_MAX_FIELD_NUMBER: _ClassVar[int]
    target_rate: float
    target_cost: float
    eta: float
    multiplier: float
    lambda_max: float
    def __init__(self, target_rate: _Optional[float] = ..., target_cost: _Optional[float] = ..., eta: _Optional[float] = ..., multiplier: _Optional[float] = ..., lambda_max: _Optional[float] = ...) -> None: ...

class SetBudgetResponse(_message.Message):
    __slots__ = ("budget",)
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    budget: GetBudgetResponse
    def __init__(self, budget: _Optional[_Union[GetBudgetResponse, _Mapping]] = ...) -> None: ...

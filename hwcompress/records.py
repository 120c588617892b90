"""Records that flow between stages: frozen dataclasses with a schema version.

Each record has ``to_dict()`` (JSON-safe, carries ``schema``) and ``from_dict()``
(checks the schema version and rejects unknown keys).  Units are in the field names:
``_ms`` milliseconds, ``_bytes`` bytes, ``_s`` seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar

from hwcompress.errors import HwcompressError

SCHEMA_VERSION = 1
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8", "int4")

R = TypeVar("R", bound="Record")


class RecordError(HwcompressError):
    """A serialised record that does not match its schema."""


def _encode(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict(with_schema=False)
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def _decode(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _decode(non_none[0], value, where)
    if isinstance(tp, type) and issubclass(tp, Record):
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object for {tp.__name__}, got {type(value).__name__}")
        return tp._from_fields(value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecordError(f"{where}: expected a list, got {type(value).__name__}")
        item_t = args[0] if args else Any
        return tuple(_decode(item_t, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object, got {type(value).__name__}")
        val_t = args[1] if len(args) == 2 else Any
        return {k: _decode(val_t, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise RecordError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


@dataclass(frozen=True)
class Record:
    """Base of every record: JSON round trip with a schema version."""

    SCHEMA: ClassVar[int] = SCHEMA_VERSION

    def to_dict(self, with_schema: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if with_schema:
            out["schema"] = self.SCHEMA
        for f in dataclasses.fields(self):
            out[f.name] = _encode(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        data = dict(data)
        schema = data.pop("schema", cls.SCHEMA)
        if schema != cls.SCHEMA:
            raise RecordError(
                f"{cls.__name__}: schema version {schema} is not supported (this hwcompress reads "
                f"{cls.SCHEMA}); re-create the file with this version"
            )
        return cls._from_fields(data, cls.__name__)

    @classmethod
    def _from_fields(cls, data: dict[str, Any], where: str) -> Self:
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise RecordError(
                f"{where}: unknown key(s) {', '.join(unknown)}; known keys are {', '.join(sorted(names))}"
            )
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise RecordError(f"{where}: missing required key(s) {', '.join(missing)}")
        kwargs = {k: _decode(hints[k], v, f"{where}.{k}") for k, v in data.items()}
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise RecordError(f"{where}: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls.from_dict(json.loads(text))

    def digest(self) -> str:
        """Stable sha256 of the record's canonical JSON (first 16 hex digits)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Connection(Record):
    """How to reach the device: ``local`` (this machine) or ``ssh``."""

    kind: str = "local"
    host: str = ""
    port: int = 22
    user: str = ""
    key: str = ""
    known_hosts: str = ""
    python: str = "python3"
    workdir: str = "/tmp/hwcompress"
    connect_timeout_s: float = 10.0
    command_timeout_s: float = 120.0

    @property
    def board(self) -> str:
        """The device this connection reaches, as measurements record it: ``host:port``, or ``local``."""
        return f"{self.host}:{self.port}" if self.kind == "ssh" else "local"


@dataclass(frozen=True)
class MeasureSettings(Record):
    """Timing settings for one profile: warm-up, then timed runs until both minimums are met."""

    warmup_runs: int = 10
    min_runs: int = 50
    min_seconds: float = 0.2
    max_runs: int = 5000
    max_seconds: float = 10.0
    max_cv: float = 0.03
    max_rounds: int = 3
    timeout_s: float = 120.0
    # Timed seconds of each *judged* round (a short profile in a fresh process: the search's readings,
    # its verdicts, `baseline` and `check`; hwcompress.judge).  Raise it on a board where a round should
    # weigh inference more than process start.
    round_seconds: float = 0.1


@dataclass(frozen=True)
class RuntimeOptions(Record):
    """Runtime-specific knobs; each one is named and typed (no free-form dict)."""

    graph_optimization: str = "all"
    execution_provider: str = "CPUExecutionProvider"
    xnnpack: bool = True
    trt_workspace_mb: int = 1024
    device_index: int = 0


@dataclass(frozen=True)
class Target(Record):
    """A device to compress for, read from ``targets/<name>.toml``."""

    name: str
    runtime: str
    description: str = ""
    connection: Connection = field(default_factory=Connection)
    threads: int = 1
    precisions: tuple[str, ...] = ("fp32", "int8")
    channel_multiple: int = 1
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    options: RuntimeOptions = field(default_factory=RuntimeOptions)
    # Boards of this kind in a pool (``--hosts``): a board whose baseline differs from the pool's reference
    # board by more than this fraction is dropped; the others' readings are scaled onto the reference's.
    board_tolerance: float = 0.05

    def settings_digest(self) -> str:
        """Digest of what changes a measurement: runtime, threads, options, measure settings."""
        payload = {
            "runtime": self.runtime,
            "threads": self.threads,
            "options": self.options.to_dict(with_schema=False),
            "measure": {k: v for k, v in self.measure.to_dict(with_schema=False).items()
                        if k != "round_seconds"},  # a judged round's own settings carry it as min_seconds
            "host": f"{self.connection.host}:{self.connection.port}" if self.connection.kind == "ssh" else "local",
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- measurements
@dataclass(frozen=True)
class LatencyStats(Record):
    """Per-inference latency statistics over ``n`` timed runs (ms); ``cv`` = std / mean."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    cv: float
    n: int
    min_ms: float = 0.0
    max_ms: float = 0.0
    robust_cv: float = 0.0  # 1.4826 * MAD / median: spread that single outliers do not inflate


@dataclass(frozen=True)
class Measurement(Record):
    """One profile of one model on one target, as returned by a profiler."""

    target: str
    model_sha256: str
    latency: LatencyStats
    peak_memory_bytes: int
    model_bytes: int
    load_ms: float
    runtime: str
    runtime_version: str
    device: str
    settings: MeasureSettings
    threads: int
    timestamp: str
    profiler_version: str
    rounds: int = 1
    median_cv: float = 0.0
    wall_s: float = 0.0
    cached: bool = False
    per_node_us: dict[str, float] = field(default_factory=dict)  # node name -> mean time per run (us)
    board: str = ""  # the device that took it (host:port, or local); "" in records from before boards were named
    # Times were divided by this: the device's speed when it was taken relative to a reference reading —
    # a pool board's calibration, or the baseline profiled beside it (a search's paired reading); 1.0 = as measured
    board_scale: float = 1.0


# --------------------------------------------------------------------------- compression
@dataclass(frozen=True)
class LayerInfo(Record):
    """One prunable/quantizable layer; ``group`` ties channels that must be pruned together."""

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    groups: int = 1
    macs: int = 0
    params: int = 0
    group: int = -1
    prunable: bool = True
    latency_share: float = 0.0


@dataclass(frozen=True)
class CompressionPolicy(Record):
    """Per-layer keep ratio (0, 1] and per-layer precision; unnamed layers keep 1.0 / fp32."""

    keep: dict[str, float] = field(default_factory=dict)
    precision: dict[str, str] = field(default_factory=dict)
    default_precision: str = "fp32"

    def __post_init__(self) -> None:
        for name, ratio in self.keep.items():
            if not 0.0 < ratio <= 1.0:
                raise RecordError(f"keep ratio for {name} is {ratio}; it must be in (0, 1]")
        for name, prec in {**self.precision, "<default>": self.default_precision}.items():
            if prec not in PRECISIONS:
                raise RecordError(
                    f"precision for {name} is {prec!r}; choose one of {', '.join(PRECISIONS)}"
                )


@dataclass(frozen=True)
class Candidate(Record):
    """One evaluated point of a search."""

    policy: CompressionPolicy
    stage: str
    accuracy: float
    macs: int
    params: int
    reward: float
    seconds: float
    measurement: Measurement | None = None
    error: str = ""
    episode: int = -1


@dataclass(frozen=True)
class ModelFigures(Record):
    """Measured figures of one model (baseline or result) in a manifest."""

    accuracy: float
    file_bytes: int
    macs: int
    params: int
    measurement: Measurement | None = None
    file: str = ""  # the model file these figures are of (artifact-relative, or a label for a variant)
    precisions: dict[str, int] = field(default_factory=dict)  # number of weight layers per precision


@dataclass(frozen=True)
class LayerRecord(Record):
    """One weight layer of an artifact: keep ratio, precision asked for and precision found in the file."""

    name: str
    op_type: str = ""
    params: int = 0
    keep: float = 1.0
    precision: str = "fp32"
    effective: str = ""


@dataclass(frozen=True)
class Manifest(Record):
    """What an artifact directory holds and every number measured to make it."""

    source_model: str
    source_sha256: str
    target: Target
    policy: CompressionPolicy
    baseline: ModelFigures
    result: ModelFigures
    files: dict[str, str] = field(default_factory=dict)
    tool_versions: dict[str, str] = field(default_factory=dict)
    command: str = ""
    seed: int = 0
    output_tolerance: float = 0.0
    created: str = ""
    # on reference.npz: max |logit - float logit| <= output_tolerance and top-1 agreement >= this
    min_top1_agreement: float = 0.0
    output_tolerances: dict[str, float] = field(default_factory=dict)  # per model file; else output_tolerance
    layers: tuple[LayerRecord, ...] = ()
    variants: dict[str, ModelFigures] = field(default_factory=dict)  # other measured policies, by label
    # A search's budgets and the final verdict on them (empty / None for `export`, which has no budget)
    budget: dict[str, Any] = field(default_factory=dict)
    budget_met: bool | None = None

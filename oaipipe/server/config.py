"""Settings of the server: where it listens, where it keeps files, and the faults it injects."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["INJECTABLE_STATUSES", "Faults", "ServerConfig", "parse_error_rate"]

#: statuses that ``--error-rate`` may inject
INJECTABLE_STATUSES = (400, 401, 403, 404, 408, 409, 422, 429, 500, 502, 503, 504)


@dataclass
class Faults:
    """Faults injected into the inference endpoints (chat completions, responses), never into batches.

    ``error_rates`` maps an HTTP status to the share of calls answered with it (``{429: 0.2}``).
    ``drop_rate``: share of calls whose connection is closed without any response.
    ``timeout_rate``: share of calls that sleep ``timeout_seconds`` before answering (to trip client timeouts).
    """

    latency: float = 0.0
    jitter: float = 0.0
    error_rates: dict[int, float] = field(default_factory=dict)
    retry_after: float = 1.0
    drop_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        self.error_rates = {int(k): float(v) for k, v in (self.error_rates or {}).items()}
        self.validate()

    def validate(self) -> None:
        for name in ("latency", "jitter", "retry_after", "timeout_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("drop_rate", "timeout_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        for status, rate in self.error_rates.items():
            if status not in INJECTABLE_STATUSES:
                raise ValueError(f"cannot inject status {status}; use one of "
                                 + ", ".join(str(s) for s in INJECTABLE_STATUSES))
            if not 0 <= rate <= 1:
                raise ValueError(f"error rate for {status} must be between 0 and 1, got {rate}")
        total = sum(self.error_rates.values()) + self.drop_rate + self.timeout_rate
        if total > 1 + 1e-9:
            raise ValueError(f"error, drop and timeout rates add up to {total:.2f}; they must not exceed 1")

    def updated(self, **changes: Any) -> Faults:
        """A copy with ``changes`` applied (unknown names are an error)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        data = asdict(self)
        data.update(changes)
        return Faults(**data)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["error_rates"] = {str(k): v for k, v in self.error_rates.items()}
        return data


@dataclass
class ServerConfig:
    """Everything ``oaipipe serve`` can be told. ``data_dir=None`` uses a temporary folder removed on close."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path | None = None
    api_key: str | None = field(default=None, repr=False)  # never in a repr (logs, tracebacks)
    seed: int | None = None
    ft_seconds: float = 1.0
    ft_min_examples: int = 10
    batch_seconds: float = 0.2
    log_requests: bool = False
    faults: Faults = field(default_factory=Faults)
    #: requests / tokens per minute enforced on the inference endpoints (429 + x-ratelimit-* headers);
    #: ``rate_burst``: seconds of refill a limit's bucket holds (60: the whole minute; 1: quantized per second)
    rpm: int | None = None
    tpm: int | None = None
    rate_burst: float = 60.0

    def __post_init__(self) -> None:
        if self.data_dir is not None:
            self.data_dir = Path(self.data_dir).expanduser()
        if self.ft_seconds < 0 or self.batch_seconds < 0:
            raise ValueError("ft_seconds and batch_seconds must be >= 0")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if not (isinstance(self.rate_burst, int | float) and 0 < self.rate_burst < float("inf")):
            raise ValueError(f"rate_burst must be a number of seconds > 0, got {self.rate_burst!r}")
        if isinstance(self.faults, dict):
            self.faults = Faults(**self.faults)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ServerConfig:
        """Build from flat keyword arguments: server settings and fault settings mixed
        (``latency=0.1, error_rates={429: 0.2}, api_key="k"``)."""
        own = {f.name for f in fields(cls)}
        fault_names = {f.name for f in fields(Faults)}
        server_kw = {k: v for k, v in kwargs.items() if k in own}
        fault_kw = {k: v for k, v in kwargs.items() if k in fault_names}
        unknown = sorted(set(kwargs) - own - fault_names)
        if unknown:
            raise TypeError(f"unknown server setting(s): {', '.join(unknown)}; known: "
                            + ", ".join(sorted(own | fault_names)))
        if fault_kw:
            base = server_kw.pop("faults", None) or Faults()
            server_kw["faults"] = base.updated(**fault_kw) if isinstance(base, Faults) else Faults(**{**base, **fault_kw})
        return cls(**server_kw)


def parse_error_rate(text: str) -> tuple[int, float]:
    """``"429=0.2"`` → ``(429, 0.2)``; raises ``ValueError`` with the expected form."""
    status, sep, rate = text.partition("=")
    try:
        if not sep:
            raise ValueError
        code, value = int(status.strip()), float(rate.strip())
    except ValueError:
        raise ValueError(f"'{text}' is not STATUS=RATE; write e.g. 429=0.2") from None
    if code not in INJECTABLE_STATUSES:
        raise ValueError(f"cannot inject status {code}; use one of " + ", ".join(str(s) for s in INJECTABLE_STATUSES))
    if not 0 <= value <= 1:
        raise ValueError(f"rate {value} for {code} must be between 0 and 1")
    return code, value

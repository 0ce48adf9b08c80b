"""Settings of the server: where it listens, where it keeps files, and the faults it injects."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import asdict, dataclass, field, fields
from datetime import date
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_MAX_BODY_SIZE", "INJECTABLE_STATUSES", "MAX_FAULT_SECONDS", "Faults", "ServerConfig",
           "is_loopback_address", "parse_error_rate", "parse_model_shutdowns", "parse_size"]

#: statuses that ``--error-rate`` may inject
INJECTABLE_STATUSES = (400, 401, 403, 404, 408, 409, 422, 429, 500, 502, 503, 504)
#: the longest delay a fault setting may ask for (latency, jitter, Retry-After, a stalled call)
MAX_FAULT_SECONDS = 3600.0
#: default cap on a request body: OpenAI accepts up to 50 MB of images per request, about 67 MB once
#: base64-encoded into JSON; 80 MiB leaves room for the text around them
DEFAULT_MAX_BODY_SIZE = 80 * 1024 * 1024


def _number(name: str, value: Any, low: float, high: float, what: str = "a number") -> float:
    """``value`` as a float in ``[low, high]``; a ``ValueError`` naming ``name`` otherwise (NaN, inf, text)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be {what} between {low:g} and {high:g}, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{name} must be {what} between {low:g} and {high:g}, got {number!r}")
    return number


@dataclass
class Faults:
    """Faults injected into the inference endpoints (chat completions, responses), never into batches.

    ``error_rates`` maps an HTTP status to the share of calls answered with it (``{429: 0.2}``).
    ``drop_rate``: share of calls whose connection is closed without any response.
    ``timeout_rate``: share of calls that sleep ``timeout_seconds`` before answering (to trip client timeouts).
    ``flex_unavailable_rate``: share of ``service_tier: "flex"`` calls answered 429 "Resource Unavailable"
    (a draw of its own, after the others: it does not count towards their sum).

    A streamed call (``stream: true``) gets the latency spread over its output events, and a drop cuts it
    in the middle of the stream instead of before the first byte.
    """

    latency: float = 0.0
    jitter: float = 0.0
    error_rates: dict[int, float] = field(default_factory=dict)
    retry_after: float = 1.0
    drop_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_seconds: float = 10.0
    flex_unavailable_rate: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Normalise and check every setting: finite numbers in range (NaN, inf, negatives, text and
        booleans are refused with a ``ValueError`` naming the setting), known statuses, rates adding up to 1."""
        for name in ("latency", "jitter", "retry_after", "timeout_seconds"):
            setattr(self, name, _number(name, getattr(self, name), 0, MAX_FAULT_SECONDS, "a number of seconds"))
        for name in ("drop_rate", "timeout_rate", "flex_unavailable_rate"):
            setattr(self, name, _number(name, getattr(self, name), 0, 1))
        if not isinstance(self.error_rates or {}, dict):
            raise ValueError(f"error_rates must map statuses to rates, e.g. {{429: 0.2}}, got {self.error_rates!r}")
        rates: dict[int, float] = {}
        for key, rate in (self.error_rates or {}).items():
            try:
                if isinstance(key, bool | float):
                    raise ValueError
                status = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"error_rates: {key!r} is not an HTTP status; use one of "
                                 + ", ".join(str(s) for s in INJECTABLE_STATUSES)) from None
            if status not in INJECTABLE_STATUSES:
                raise ValueError(f"cannot inject status {status}; use one of "
                                 + ", ".join(str(s) for s in INJECTABLE_STATUSES))
            rates[status] = _number(f"error rate for {status}", rate, 0, 1)
        self.error_rates = rates
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
    #: a test switch: model id → shutdown date (YYYY-MM-DD) reported as ``shutdown_date`` by /v1/models; a
    #: model past its date is no longer listed and answers 404 ``model_not_found`` (docs/serve.md)
    model_shutdowns: dict[str, str] = field(default_factory=dict)
    #: prompt-prefix blocks (128 tokens each) remembered for cached-token usage; 0 turns prompt caching off
    prompt_cache_size: int = 65536
    faults: Faults = field(default_factory=Faults)
    #: largest request body accepted, in bytes (a bigger one gets 413 without being read)
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    #: seconds a client has to send a request's headers (counted from when the server starts waiting, so an
    #: idle keep-alive connection is closed after it too), then again for its body, and to take the reply
    client_timeout: float = 30.0
    #: connections served at once (one thread each); one more is answered 503 and closed
    max_connections: int = 256
    #: requests / tokens per minute enforced on the inference endpoints (429 + x-ratelimit-* headers);
    #: ``rate_burst``: seconds of refill a limit's bucket holds (60: the whole minute; 1: quantized per second)
    rpm: int | None = None
    tpm: int | None = None
    rate_burst: float = 60.0

    def __post_init__(self) -> None:
        if self.data_dir is not None:
            self.data_dir = Path(self.data_dir).expanduser()
        self.ft_seconds = _number("ft_seconds", self.ft_seconds, 0, 86400, "a number of seconds")
        self.batch_seconds = _number("batch_seconds", self.batch_seconds, 0, 86400, "a number of seconds")
        self.client_timeout = _number("client_timeout", self.client_timeout, 0.01, 86400, "a number of seconds")
        for name in ("max_body_size", "max_connections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if not (isinstance(self.rate_burst, int | float) and 0 < self.rate_burst < float("inf")):
            raise ValueError(f"rate_burst must be a number of seconds > 0, got {self.rate_burst!r}")
        if isinstance(self.prompt_cache_size, bool) or not isinstance(self.prompt_cache_size, int) \
                or self.prompt_cache_size < 0:
            raise ValueError(f"prompt_cache_size must be a whole number >= 0, got {self.prompt_cache_size!r}")
        self.model_shutdowns = parse_model_shutdowns(self.model_shutdowns)
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


def parse_model_shutdowns(value: Any) -> dict[str, str]:
    """``{"gpt-4o-mini": "2027-01-14"}`` checked: model ids to ISO dates (``ValueError`` naming the bad one).
    Also takes ``"MODEL=YYYY-MM-DD"`` strings (the ``--model-shutdown`` flag) in a list."""
    if isinstance(value, list | tuple):
        pairs: dict[str, Any] = {}
        for item in value:
            model, sep, day = str(item).partition("=")
            if not sep or not model.strip():
                raise ValueError(f"'{item}' is not MODEL=YYYY-MM-DD; write e.g. gpt-4o-mini=2027-01-14")
            pairs[model.strip()] = day.strip()
        value = pairs
    if not isinstance(value, dict):
        raise ValueError(f"model_shutdowns must map model ids to dates (YYYY-MM-DD), got {value!r}")
    out: dict[str, str] = {}
    for model, day in value.items():
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model_shutdowns: {model!r} is not a model id")
        try:
            out[model.strip()] = date.fromisoformat(str(day)).isoformat()
        except ValueError:
            raise ValueError(f"model_shutdowns: the date of {model} is {day!r}; write YYYY-MM-DD, "
                             "e.g. 2027-01-14") from None
    return out


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


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000 ** 2, "mb": 1000 ** 2, "mib": 1024 ** 2,
          "g": 1000 ** 3, "gb": 1000 ** 3, "gib": 1024 ** 3}


def parse_size(text: str) -> int:
    """``"80MiB"`` → 83886080, ``"200MB"`` → 200000000, ``"4096"`` → 4096; ``ValueError`` with the expected form."""
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("kmgib")
    unit = raw[len(number):]
    try:
        if unit not in _UNITS:
            raise ValueError
        value = float(number)
        if not math.isfinite(value):
            raise ValueError
    except ValueError:
        raise ValueError(f"'{text}' is not a size; write bytes or a number with a unit, e.g. 80MiB, 200MB, "
                         "65536") from None
    size = int(value * _UNITS[unit])
    if size < 1:
        raise ValueError(f"'{text}' is too small; the size must be at least 1 byte")
    return size


def is_loopback_address(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1, ::ffff:127.x.x.x)."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))

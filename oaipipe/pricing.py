"""Prices in USD per 1M tokens, and the arithmetic of cost.

The table holds list prices as published by OpenAI (standard tier) at the time of writing; they change.
Override any entry from a pipeline (``prices: {model: {input: 0.15, output: 0.6}}``) or with a JSON/YAML
file named by ``OAIPIPE_PRICES``. Models are matched by exact id, then by the longest known prefix
(``gpt-4o-mini-2024-07-18`` → ``gpt-4o-mini``; ``ft:gpt-4o-mini:org::id`` → the fine-tuned price of
``gpt-4o-mini``). Unknown models, the embedded engine's labels (``local:<model>``, asked of
:func:`oaipipe.engine.tuning.is_engine_model`) and every call of a backend that is not
:attr:`~oaipipe.base.Backend.priced` (``lookup(model, priced=False)``) cost 0 and are reported as
unpriced, unless an override names that exact model id (``prices: {"local:gpt-4o-mini": {input: 1000,
output: 4000}}``): an explicit override for an exact id always wins, which lets ``--max-cost`` be tried
offline.

Tiers (``standard``, ``flex``, ``priority``, ``batch``; :data:`TIERS`): ``batch`` and ``flex`` are billed at
the Batch API's rates, half the standard price (:data:`TIER_DISCOUNT`; OpenAI's *Flex processing* guide:
"Tokens are priced at Batch API rates"); ``priority`` has its own, higher prices per model
(``priority_input``, ``priority_cached_input``, ``priority_output``), known for the models OpenAI's
*Priority processing* page lists and unknown otherwise. docs/platform.md gives the sources and dates.

A call is priced by the model the server reports back, and by the model it asked for when the table knows
nothing of the reported one (``lookup(model, requested=...)``): OpenAI reports dated snapshots (priced by
prefix), other servers may report labels of their own (``oaipipe serve`` answers ``local:gpt-6-luna`` for
``gpt-6-luna``), and such a call is priced as the model it asked for.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine.tuning import is_engine_model

__all__ = ["DEFAULT_PRICES", "PRICE_FIELDS", "TIERS", "TIER_DISCOUNT", "Price", "PriceTable", "check_budget",
           "check_prices", "price_table", "tier_of"]

#: model -> {"input", "cached_input", "output", "training", "ft_input", "ft_output", "priority_input",
#: "priority_cached_input", "priority_output"} in USD per 1M tokens (priority: OpenAI's *Priority processing*
#: page, docs/platform.md); a fine-tuned model's cached input is derived (:func:`_ft_cached`) unless
#: ``ft_cached_input`` is given
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "gpt-4o": {"input": 2.50, "cached_input": 1.25, "output": 10.00, "training": 25.00,
               "ft_input": 3.75, "ft_output": 15.00,
               "priority_input": 4.25, "priority_cached_input": 2.125, "priority_output": 17.00},
    "gpt-4o-mini": {"input": 0.15, "cached_input": 0.075, "output": 0.60, "training": 3.00,
                    "ft_input": 0.30, "ft_output": 1.20,
                    "priority_input": 0.25, "priority_cached_input": 0.125, "priority_output": 1.00},
    "gpt-4.1": {"input": 2.00, "cached_input": 0.50, "output": 8.00, "training": 25.00,
                "ft_input": 3.00, "ft_output": 12.00,
                "priority_input": 3.50, "priority_cached_input": 0.875, "priority_output": 14.00},
    "gpt-4.1-mini": {"input": 0.40, "cached_input": 0.10, "output": 1.60, "training": 5.00,
                     "ft_input": 0.80, "ft_output": 3.20,
                     "priority_input": 0.70, "priority_cached_input": 0.175, "priority_output": 2.80},
    "gpt-4.1-nano": {"input": 0.10, "cached_input": 0.025, "output": 0.40, "training": 1.50,
                     "ft_input": 0.20, "ft_output": 0.80,
                     "priority_input": 0.20, "priority_cached_input": 0.05, "priority_output": 0.80},
    "gpt-3.5-turbo": {"input": 0.50, "output": 1.50, "training": 8.00, "ft_input": 3.00, "ft_output": 6.00},
    "o4-mini": {"input": 1.10, "cached_input": 0.275, "output": 4.40,
                "priority_input": 2.00, "priority_cached_input": 0.50, "priority_output": 8.00},
    "gpt-5": {"input": 1.25, "cached_input": 0.125, "output": 10.00,
              "priority_input": 2.50, "priority_cached_input": 0.25, "priority_output": 20.00},
    "gpt-5-mini": {"input": 0.25, "cached_input": 0.025, "output": 2.00,
                   "priority_input": 0.45, "priority_cached_input": 0.045, "priority_output": 3.60},
    "gpt-5-nano": {"input": 0.05, "cached_input": 0.005, "output": 0.40},
    # the replacement OpenAI names for gpt-4o/4.1(-mini); price as reported by third parties (docs/platform.md)
    "gpt-6-luna": {"input": 0.10, "cached_input": 0.01, "output": 0.50},
}

#: the fields a price entry may have (USD per 1M tokens); a model must end up with the required ones
PRICE_FIELDS: dict[str, bool] = {"input": True, "output": True, "cached_input": False, "training": False,
                                 "ft_input": False, "ft_cached_input": False, "ft_output": False,
                                 "priority_input": False, "priority_cached_input": False,
                                 "priority_output": False}
BUILTIN_ORIGIN = "the built-in price table (oaipipe/pricing.py)"
_FORMAT = "{MODEL: {input: USD_PER_1M, output: USD_PER_1M}}"

#: the Batch API bills half of the standard price
BATCH_DISCOUNT = 0.5
#: the tiers a call can be processed at, as oaipipe names them (OpenAI's ``service_tier: default`` is
#: ``standard``; ``batch`` is the Batch API)
TIERS = ("standard", "flex", "priority", "batch")
#: tiers billed at a fraction of the standard price: the Batch API, and flex ("priced at Batch API rates")
TIER_DISCOUNT: dict[str, float] = {"batch": BATCH_DISCOUNT, "flex": BATCH_DISCOUNT}
#: what servers report in a reply's ``service_tier`` -> the tier it is billed at
_REPORTED = {"default": "standard", "auto": "standard", "scale": "standard", "standard": "standard",
             "flex": "flex", "priority": "priority", "fast": "priority", "batch": "batch"}


def tier_of(service_tier: str | None, *, batch: bool = False) -> str:
    """The tier a call is billed at: ``batch`` for a call through the Batch API, else the tier the reply
    reports (``default`` and anything unknown: ``standard``)."""
    if batch:
        return "batch"
    return _REPORTED.get(str(service_tier or "default").lower(), "standard")


def check_prices(table: Any, *, base: dict[str, dict[str, float]] | None = None, origin: str = "prices",
                 file: str | None = None, lines: Callable[[str], tuple[int | None, int | None]] | None = None,
                 prefix: str = "", hint_suffix: str = "") -> dict[str, dict[str, float]]:
    """``table`` checked and converted to floats, or a :class:`~oaipipe.errors.ConfigError` saying what to fix.

    Each price must be a finite number >= 0 (``.nan``, ``.inf`` and negative prices would switch
    ``--max-cost`` off or make ``summary.json`` invalid JSON); each field must be one of
    :data:`PRICE_FIELDS`; and each model, merged over ``base`` (the entries already in the table), must have
    both an ``input`` and an ``output`` price (a missing one would be billed as free). ``origin`` says where
    the table came from in the message when ``file`` (the pipeline file) is not given; ``lines``/``prefix``
    locate a key in it; ``hint_suffix`` is added to every hint.
    """
    from .errors import ConfigError

    def fail(key: str, message: str, hint: str) -> ConfigError:
        if file is None:
            return ConfigError(f"{origin}: {key}: {message}", hint=hint + hint_suffix)
        line, column = lines(key) if lines else (None, None)
        return ConfigError(message, file=file, line=line, column=column, key=key, hint=hint + hint_suffix)

    if not isinstance(table, dict):
        raise fail(prefix.rstrip(".") or "prices", f"expected a mapping of model id to prices, got {_kind(table)}",
                   f"write it as {_FORMAT} (USD per 1M tokens)")
    out: dict[str, dict[str, float]] = {}
    for model, entry in table.items():
        key = f"{prefix}{model}"
        if not isinstance(model, str) or not model.strip():
            raise fail(key, f"a model id must be a non-empty string, not {model!r}", f"write it as {_FORMAT}")
        if not isinstance(entry, dict):
            raise fail(key, f"expected {{input: USD_PER_1M, output: USD_PER_1M}}, got {_kind(entry)}",
                       f"write it as {_FORMAT} (USD per 1M tokens)")
        checked: dict[str, float] = {}
        for name, value in entry.items():
            field_key = f"{key}.{name}"
            if name not in PRICE_FIELDS:
                close = difflib.get_close_matches(str(name), list(PRICE_FIELDS), n=1)
                text = f"unknown price field '{name}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                raise fail(field_key, text, f"the fields are {', '.join(PRICE_FIELDS)} (USD per 1M tokens)")
            number = _number(value)
            if number is None or not math.isfinite(number) or number < 0:
                raise fail(field_key, f"a price must be a finite number >= 0 (USD per 1M tokens), not {value!r}",
                           f"write the list price, e.g. `{name}: 0.15` (0 for free)")
            checked[str(name)] = number
        merged = {**(base or {}).get(model, {}), **checked}
        missing = [name for name, required in PRICE_FIELDS.items() if required and name not in merged]
        if missing:
            have = ", ".join(f"{k}: {v:g}" for k, v in merged.items()) or "nothing"
            raise fail(key, f"'{model}' has no {' and no '.join(repr(m) for m in missing)} price (it has {have})",
                       "give every price a model is billed at: "
                       + ", ".join(f"`{m}: USD_PER_1M`" for m in missing) + " next to the others")
        out[model] = checked
    return out


def check_budget(value: Any, *, name: str = "--max-cost") -> float:
    """A cost budget in USD: a finite number > 0, or a ``ValueError`` naming ``name`` and the fix."""
    number = _number(value)
    if number is None or not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a finite number of USD > 0 (e.g. {name} 5), not {value!r}")
    return number


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]


@dataclass(frozen=True)
class Price:
    model: str
    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None
    training: float | None = None
    known: bool = True
    #: the priority tier's prices (None: not known for this model)
    priority_input: float | None = None
    priority_output: float | None = None
    priority_cached_input: float | None = None

    def tier_known(self, tier: str) -> bool:
        """A price is known for ``tier`` (priority has prices of its own, known for some models only)."""
        if not self.known:
            return False
        return tier != "priority" or (self.priority_input is not None and self.priority_output is not None)

    def rates(self, tier: str = "standard") -> tuple[float, float, float]:
        """(input, cached input, output) USD per 1M tokens at ``tier``; ``priority`` without known prices
        falls back to the standard ones (a lower bound: :meth:`tier_known` says whether they are known)."""
        cached = self.input if self.cached_input is None else self.cached_input
        if tier == "priority" and self.tier_known("priority"):
            assert self.priority_input is not None and self.priority_output is not None
            p_cached = self.priority_input if self.priority_cached_input is None else self.priority_cached_input
            return self.priority_input, p_cached, self.priority_output
        factor = TIER_DISCOUNT.get(tier, 1.0)
        return self.input * factor, cached * factor, self.output * factor

    def cost(self, prompt_tokens: int, completion_tokens: int, *, batch: bool = False,
             cached_tokens: int = 0, tier: str | None = None) -> float:
        """USD of one call at ``tier`` (default: ``batch`` when ``batch``, else ``standard``).
        ``cached_tokens`` (part of ``prompt_tokens``, served from the prompt cache) are billed at the cached
        input price (the input price when the model has none)."""
        cached = max(0, min(cached_tokens, prompt_tokens))
        rate_in, rate_cached, rate_out = self.rates(tier or ("batch" if batch else "standard"))
        return ((prompt_tokens - cached) * rate_in + cached * rate_cached
                + completion_tokens * rate_out) / 1_000_000

    def cache_saving(self, cached_tokens: int, *, batch: bool = False, tier: str | None = None) -> float:
        """USD the prompt cache saved on ``cached_tokens`` (full input price minus the cached price)."""
        if self.cached_input is None or cached_tokens <= 0:
            return 0.0
        rate_in, rate_cached, _ = self.rates(tier or ("batch" if batch else "standard"))
        return cached_tokens * (rate_in - rate_cached) / 1_000_000

    def training_cost(self, trained_tokens: int) -> float | None:
        if self.training is None:
            return None
        return trained_tokens * self.training / 1_000_000


class PriceTable:
    """Looks up a :class:`Price` for a model id, with overrides on top of the defaults.

    Every entry is checked as it is merged, wherever it comes from (the built-in table, the
    ``OAIPIPE_PRICES`` file, the pipeline's ``prices:``): each price must be a finite number >= 0 and a
    known field, and every model must end up with both an ``input`` and an ``output`` price. A bad entry
    raises :class:`~oaipipe.errors.ConfigError` naming where it came from, the model, the field and the fix.
    ``file``/``lines`` locate the pipeline's ``prices:`` block (``lines`` maps a dotted key to (line, column)).
    """

    def __init__(self, overrides: dict[str, dict[str, float]] | None = None, *, file: str | None = None,
                 lines: Callable[[str], tuple[int | None, int | None]] | None = None,
                 models: Mapping[str, Any] | None = None) -> None:
        self.prices: dict[str, dict[str, float]] = {}
        #: model ids given explicitly by the user (pipeline ``prices:`` or ``OAIPIPE_PRICES``)
        self.overridden: set[str] = set()
        self._merge(DEFAULT_PRICES, origin=BUILTIN_ORIGIN, explicit=False,
                    hint_suffix=" (this is a bug in oaipipe's table: please report it)")
        env_file = os.environ.get("OAIPIPE_PRICES")
        if env_file:
            self._merge(_env_table(Path(env_file)), origin=f"OAIPIPE_PRICES file {env_file}",
                        hint_suffix=", or unset OAIPIPE_PRICES")
        model_prices = _model_prices(models)
        if model_prices:  # the pipeline's `models:` block, then its `prices:` over it
            self._merge(model_prices, origin="the pipeline's models", file=file, lines=lines, prefix="models.")
        if overrides:
            self._merge(overrides, origin="the pipeline's prices", file=file, lines=lines, prefix="prices.")

    def update(self, table: dict[str, dict[str, float]]) -> None:
        """Merge explicit prices (checked like every other source)."""
        self._merge(table, origin="prices", prefix="prices.")

    def _merge(self, table: Any, *, origin: str, file: str | None = None,
               lines: Callable[[str], tuple[int | None, int | None]] | None = None, prefix: str = "",
               explicit: bool = True, hint_suffix: str = "") -> None:
        checked = check_prices(table, base=self.prices, origin=origin, file=file, lines=lines, prefix=prefix,
                               hint_suffix=hint_suffix)
        for model, entry in checked.items():
            self.prices.setdefault(model, {}).update(entry)
            if explicit:
                self.overridden.add(model)

    def lookup(self, model: str, *, priced: bool = True, requested: str | None = None) -> Price:
        """The price of a call answered by ``model`` (the id the server reports back).

        ``priced=False``: the call is made by a free backend (:attr:`oaipipe.base.Backend.priced`), which
        only an explicit price of this exact id gives a cost. ``requested``: the model the call asked for,
        used when the table knows nothing of the reported id: OpenAI reports dated snapshots
        (``gpt-4o-mini-2024-07-18``, priced by its longest known prefix, ``gpt-4o-mini``), but another
        server may report a label of its own (``oaipipe serve``: ``local:gpt-6-luna``; a proxy's deployment
        name), and then the call is priced as the model asked for. The returned price names ``model``."""
        if model and model in self.overridden:
            # an explicit price for this exact id wins, also for local models (try --max-cost offline)
            return self._price(model, self.prices[model], fine_tuned=False)
        if not model or not priced:
            return Price(model=model, known=False)
        found = self._resolve(model)
        if found is None and requested and requested != model:
            found = self._resolve(requested)
        if found is None:
            return Price(model=model, known=False)
        entry, fine_tuned = found
        return self._price(model, entry, fine_tuned=fine_tuned)

    def _resolve(self, model: str) -> tuple[dict[str, float], bool] | None:
        """The table's entry for ``model`` (exact id, a fine-tuned model's base, the longest known prefix) and
        whether it is a fine-tuned model; None for an unknown model or one of the engine's labels."""
        if model in self.overridden:
            return self.prices[model], False
        if is_engine_model(model):
            return None
        fine_tuned = model.startswith("ft:")
        base = model.split(":")[1] if fine_tuned and ":" in model else model
        entry = self.prices.get(model) or self.prices.get(base)
        if entry is None:
            matches = [k for k in self.prices if base.startswith(k)]
            entry = self.prices[max(matches, key=len)] if matches else None
        return None if entry is None else (entry, fine_tuned)

    @staticmethod
    def _price(model: str, entry: dict[str, float], *, fine_tuned: bool) -> Price:
        if fine_tuned:
            return Price(model=model, input=entry.get("ft_input", entry.get("input", 0.0)),
                         output=entry.get("ft_output", entry.get("output", 0.0)),
                         cached_input=_ft_cached(entry), training=entry.get("training"))
        return _price(model, entry)


def _price(model: str, entry: dict[str, float]) -> Price:
    return Price(model=model, input=entry.get("input", 0.0), output=entry.get("output", 0.0),
                 cached_input=entry.get("cached_input"), training=entry.get("training"),
                 priority_input=entry.get("priority_input"), priority_output=entry.get("priority_output"),
                 priority_cached_input=entry.get("priority_cached_input"))


def _ft_cached(entry: dict[str, float]) -> float | None:
    """The cached-input price of a model fine-tuned from ``entry``'s model: ``ft_cached_input`` when given,
    else the fine-tuned input price at the base model's cached discount (``cached_input / input``), which is
    how OpenAI's list prices for gpt-4.1 / gpt-4.1-mini fine-tunes relate (docs/platform.md); None (billed
    at the fine-tuned input price) when the base has no cached price."""
    if "ft_cached_input" in entry:
        return entry["ft_cached_input"]
    ft_input, base_input, base_cached = entry.get("ft_input"), entry.get("input"), entry.get("cached_input")
    if ft_input is None or not base_input or base_cached is None:
        return None
    return round(ft_input * base_cached / base_input, 9)


def _model_prices(models: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """The prices a pipeline's ``models:`` block gives (entries without a price are left out)."""
    if not models:
        return {}
    out = {}
    for model, entry in models.items():
        if hasattr(entry, "prices"):
            prices = entry.prices()
        else:  # a run's saved config: plain mappings
            prices = {k: v for k, v in dict(entry or {}).items() if k in ("input", "cached_input", "output")}
        if prices:
            out[str(model)] = prices
    return out


def _env_table(path: Path) -> dict[str, Any]:
    """The price table of the ``OAIPIPE_PRICES`` file; a :class:`ConfigError` saying what to fix."""
    import yaml

    from .errors import ConfigError

    try:
        table = _read_table(path)
        if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
            raise ValueError("expected a mapping of model id to {input: USD_PER_1M, output: USD_PER_1M}")
        return table  # each price is checked by check_prices as it is merged
    except (OSError, ValueError, TypeError, yaml.YAMLError) as exc:
        raise ConfigError(f"OAIPIPE_PRICES points at {path}, which cannot be used: {exc}",
                          hint="fix the file (JSON or YAML: {MODEL: {input: USD_PER_1M, output: USD_PER_1M}}) "
                               "or unset OAIPIPE_PRICES") from None


def _read_table(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


def price_table(overrides: dict[str, dict[str, float]] | None = None,
                models: Mapping[str, Any] | None = None) -> PriceTable:
    return PriceTable(overrides, models=models)

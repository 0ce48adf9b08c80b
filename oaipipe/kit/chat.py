"""What the ``ask`` and ``describe_image`` steps share: options, presets, request parameters, the call,
reply handling."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..assistants import AssistantPreset, get_preset, schema_response_format
from ..base import Context, StepContext, StepOptions
from ..errors import ConfigError
from ..openai_wire import parse_json_reply
from ..templates import render
from ..types import ChatRequest, ChatResponse, Exchange

__all__ = ["ChatStepMixin", "ChatStepOptions"]


class ChatStepOptions(StepOptions):
    """Options of the chat steps (``ask``, ``describe_image``); a step may redeclare ``prompt``."""

    prompt: str = Field(..., description="User message, a {field} template")
    system: str | None = Field(None, description="System message (a {field} template); wins over the preset")
    assistant: str | None = Field(None, description="Name of an assistant preset (assistants.yaml)")
    model: str | None = Field(None, description="Defaults to the preset's, then the backend's model")
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    json_schema: dict[str, Any] | None = Field(
        None, description="Ask for JSON following this schema (bare schema or {name, schema, strict})"
    )
    flatten: bool = Field(False, description="With json_schema: also write each key as field {output}_{key}")
    prompt_cache_key: str | None = Field(
        None, description="Sent as prompt_cache_key (a {field} template): calls sharing a long prompt prefix "
        "and this key are routed to the same prompt cache (cached input is billed at the cached price)"
    )


class ChatStepMixin:
    """Mixed into a :class:`~oaipipe.base.Step` (before it) whose options are :class:`ChatStepOptions`."""

    options: Any
    context: Context
    label: str

    def __init__(self, options: Any = None, context: Any = None) -> None:
        super().__init__(options, context)  # type: ignore[call-arg]
        self.preset: AssistantPreset | None = None
        self._prepared = False

    def prepare(self) -> None:
        """Resolve the assistant preset and check ``flatten`` (called when the pipeline is built)."""
        if self._prepared:
            return
        opts = self.options
        if opts.assistant:
            self.preset = get_preset(
                opts.assistant,
                pipeline_setting=self.context.settings.get("assistants"),
                base_dir=self.context.base_dir,
            )
        if opts.flatten and not (opts.json_schema or (self.preset and self.preset.effective_response_format())):
            raise ConfigError(
                f"step '{opts.output}': `flatten: true` needs `json_schema:` (or an assistant preset with one)",
                hint="add a json_schema describing the reply object, or remove flatten",
            )
        self._prepared = True

    # --- request parameters ------------------------------------------------------------------------

    def _system_template(self) -> str | None:
        self.prepare()
        if self.options.system is not None:
            return self.options.system
        return self.preset.instructions if self.preset else None

    def _system(self, fields: dict[str, Any], where: str) -> str | None:
        """The system message rendered over the record (the step's own, else the preset's), or None."""
        system_tpl = self._system_template()
        return render(system_tpl, fields, where=where) if system_tpl else None

    def _params(self, ctx: StepContext) -> dict[str, Any]:
        self.prepare()
        opts, preset = self.options, self.preset
        backend_opts = ctx.backend.options

        def pick(name: str) -> Any:
            value = getattr(opts, name)
            if value is None and preset is not None:
                value = getattr(preset, name)
            if value is None:
                value = getattr(backend_opts, name, None)
            return value

        response_format: dict[str, Any] | None
        if opts.json_schema is not None:
            response_format = schema_response_format(opts.json_schema, default_name=opts.output)
        else:
            response_format = preset.effective_response_format() if preset else None
        return {
            "model": pick("model"),
            "temperature": pick("temperature"),
            "max_tokens": pick("max_tokens"),
            "response_format": response_format,
        }

    def outputs(self) -> list[str]:
        """``output``, plus ``{output}_{key}`` for each schema property when ``flatten`` is on."""
        out = [self.options.output]
        if self.options.flatten:
            self.prepare()
            schema = self.options.json_schema
            if schema is None and self.preset is not None:
                rf = self.preset.effective_response_format() or {}
                schema = (rf.get("json_schema") or {}).get("schema")
            if isinstance(schema, dict) and isinstance(schema.get("schema"), dict):
                schema = schema["schema"]
            props = (schema or {}).get("properties") or {}
            out += [f"{self.options.output}_{key}" for key in props]
        return out

    # --- the call and the reply -----------------------------------------------------------------------

    def prompt_prefix(self, fields: dict[str, Any]) -> tuple[str, str] | None:
        """``(prompt_cache_key, system + prompt)`` rendered over a record's input fields: what the request's
        prompt begins with, for prompt-prefix scheduling (:mod:`oaipipe.scheduling`); raises when a template
        names a field the record does not have yet."""
        cache_key = self._cache_key(fields, "").get("prompt_cache_key", "")
        return str(cache_key), (self._system(fields, "") or "") + "\x00" + render(self.options.prompt, fields)

    def _cache_key(self, fields: dict[str, Any], where: str) -> dict[str, Any]:
        """``{"prompt_cache_key": ...}`` rendered over the record when the step sets one (the request's extra)."""
        tpl = self.options.prompt_cache_key
        return {"prompt_cache_key": render(tpl, fields, where=where)} if tpl else {}

    async def _call(self, ctx: StepContext, system: str | None, user_content: Any, logged_text: str,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send ``system`` + ``user_content`` (``extra``: more request fields, e.g. ``prompt_cache_key``);
        returns the output fields and records the exchange (with ``logged_text`` as the user message) once
        the reply was decoded."""
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": user_content})
        params = self._params(ctx)
        resp = await ctx.chat(ChatRequest(messages=messages, step=self.label, extra=dict(extra or {}), **params))
        outputs = self._outputs(resp, params["response_format"])
        self._exchange(ctx, system, logged_text, resp, requested=params["model"])
        return outputs

    def _exchange(self, ctx: StepContext, system: str | None, user_text: str, resp: ChatResponse, *,
                  requested: str | None = None) -> Exchange:
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system, "sentiment": None})
        messages.append({"role": "user", "content": user_text, "sentiment": None})
        messages.append({"role": "assistant", "content": resp.text, "sentiment": None})
        exchange = Exchange(
            record_id=ctx.record.id,
            step=self.label,
            messages=messages,
            model=resp.model,
            backend=resp.backend,
            usage=resp.usage,
            latency=resp.latency,
            request_id=resp.request_id,
            cached=resp.cached,
            requested=requested if requested and requested != resp.model else None,
            service_tier=resp.service_tier,
        )
        ctx.exchanges.append(exchange)
        return exchange

    def _outputs(self, resp: ChatResponse, response_format: dict[str, Any] | None) -> dict[str, Any]:
        out_name = self.options.output
        if not response_format or response_format.get("type") not in ("json_schema", "json_object"):
            return {out_name: resp.text}
        parsed = resp.parsed
        if parsed is None:
            parsed = parse_json_reply(resp.text, model=resp.model, request_id=resp.request_id)
        result: dict[str, Any] = {out_name: parsed}
        if self.options.flatten and isinstance(parsed, dict):
            for key, value in parsed.items():
                result[f"{out_name}_{key}"] = value
        return result

"""Built-in step ``ask``: one chat call per record, the reply written to ``output``.

The prompt and system message are ``{field}`` templates over the record. ``assistant:`` names a local
preset (see :mod:`oaipipe.assistants`) that supplies instructions, model and parameters; the step's own
options win over the preset, and the preset wins over the backend's defaults.

With ``json_schema:`` the reply is requested as JSON following the schema and ``output`` holds the
decoded object; ``flatten: true`` also writes each top-level key as its own field ``{output}_{key}``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .. import hookimpl
from ..base import Step, StepContext, StepOptions
from ..templates import render
from ..types import ChatRequest
from ._chat_step import ChatStepMixin

__all__ = ["AskStep"]


class AskStep(ChatStepMixin, Step):
    """Send a templated prompt to the backend and keep the reply (the seed's ``ask``)."""

    templates = ("prompt", "system")

    class Options(StepOptions):
        prompt: str = Field(..., description="User message, a {field} template over the record")
        system: str | None = Field(None, description="System message (a {field} template); wins over the preset")
        assistant: str | None = Field(None, description="Name of an assistant preset (assistants.yaml)")
        model: str | None = Field(None, description="Defaults to the preset's, then the backend's model")
        temperature: float | None = Field(None, ge=0, le=2)
        max_tokens: int | None = Field(None, ge=1)
        json_schema: dict[str, Any] | None = Field(
            None, description="Ask for JSON following this schema (bare schema or {name, schema, strict})"
        )
        flatten: bool = Field(False, description="With json_schema: also write each key as field {output}_{key}")

    def __init__(self, options: Any = None, context: Any = None) -> None:
        super().__init__(options, context)
        self._init_chat_step()

    async def run(self, fields: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        where = ctx.record.where
        user_text = render(self.options.prompt, fields, where=where)
        system_tpl = self._system_template()
        system = render(system_tpl, fields, where=where) if system_tpl else None
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": user_text})
        params = self._params(ctx)
        request = ChatRequest(messages=messages, step=self.label, **params)
        resp = await ctx.chat(request)
        outputs = self._outputs(resp, params["response_format"])
        self._exchange(ctx, system, user_text, resp)
        return outputs


@hookimpl
def register_steps(register: Any) -> None:
    register("ask", AskStep)

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
from ..base import Step, StepContext
from ..kit.chat import ChatStepMixin, ChatStepOptions
from ..templates import render

__all__ = ["AskStep"]


class AskStep(ChatStepMixin, Step):
    """Send a templated prompt to the backend and keep the reply (the seed's ``ask``)."""

    templates = ("prompt", "system", "prompt_cache_key")

    class Options(ChatStepOptions):
        prompt: str = Field(..., description="User message, a {field} template over the record")

    async def run(self, fields: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        where = ctx.record.where
        user_text = render(self.options.prompt, fields, where=where)
        system = self._system(fields, where)
        return await self._call(ctx, system, user_text, user_text, self._cache_key(fields, where))


@hookimpl
def register_steps(register: Any) -> None:
    register("ask", AskStep)

"""Built-in step ``describe_image``: send one or more images (and a prompt) to a vision model.

``image`` is a ``{field}`` template (or a list of them) giving a local path (relative to the pipeline
file), an ``http(s)://`` URL or a ``data:`` URL; a field holding a list of such values sends them all.
Local files and data URLs are prepared by :mod:`oaipipe.images` (EXIF rotation, RGB, downscaling for
``detail``, size caps); URLs are passed through for the server to fetch.

The dialogue log never holds image bytes: the exchange's user message is the prompt followed by
``[image: <path or URL>]`` for each image. The estimated input tokens of the images are written to the
record as ``{output}_image_tokens`` (``None`` when an image is a remote URL of unknown size).

With ``json_schema:`` the reply is decoded into ``output`` (and with ``flatten: true`` each key also
becomes a field ``{output}_{key}``), exactly as in the ``ask`` step.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import Field

from .. import hookimpl
from ..base import Step, StepContext
from ..errors import ImageError
from ..images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, PreparedImage, load_image
from ..kit.chat import ChatStepMixin, ChatStepOptions
from ..templates import fields_of, render

__all__ = ["DescribeImageStep"]

DEFAULT_PROMPT = "What's in this image?"


class DescribeImageStep(ChatStepMixin, Step):
    """Describe images with a vision model (the seed's ``describe_image``)."""

    templates = ("image", "prompt", "system", "prompt_cache_key")
    sends_images = True

    class Options(ChatStepOptions):
        image: str | list[str] = Field(
            ..., description="Image path/URL/data URL template, e.g. '{image}', or a list of them"
        )
        prompt: str = Field(DEFAULT_PROMPT, description="User message, a {field} template")
        detail: Literal["auto", "low", "high"] = Field("auto", description="Vision detail level")
        max_image_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1, description="Refuse larger source images")
        max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Refuse images with more pixels")

    def outputs(self) -> list[str]:
        return [*super().outputs(), f"{self.options.output}_image_tokens"]

    def _sources(self, fields: dict[str, Any], where: str) -> list[str]:
        templates = self.options.image if isinstance(self.options.image, list) else [self.options.image]
        sources: list[str] = []
        for tpl in templates:
            names = fields_of(tpl)
            if len(names) == 1 and tpl.strip() == "{" + names[0] + "}":
                render(tpl, fields, where=where)  # a missing field raises TemplateError here
                value = fields.get(names[0])
                if isinstance(value, (list, tuple)):
                    sources += [str(v) for v in value if v not in (None, "")]
                    continue
            sources.append(render(tpl, fields, where=where))
        if not sources or not any(s.strip() for s in sources):
            at = f" ({where})" if where else ""
            raise ImageError(f"no image to describe: the `image:` template rendered empty{at}",
                             hint="give the record an image path, URL or data URL")
        return sources

    def _prepare(self, sources: list[str]) -> list[PreparedImage]:
        opts = self.options
        return [
            load_image(src, self.context.base_dir, detail=opts.detail, max_bytes=opts.max_image_bytes,
                       max_pixels=opts.max_pixels)
            for src in sources
        ]

    async def run(self, fields: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        where = ctx.record.where
        sources = self._sources(fields, where)
        prompt = render(self.options.prompt, fields, where=where)
        system = self._system(fields, where)
        images = await asyncio.to_thread(self._prepare, sources)
        parts: list[dict[str, Any]] = [{"type": "text", "text": prompt}] + [img.part() for img in images]
        user_text = prompt + "".join(f" [image: {img.source_label}]" for img in images)
        outputs = await self._call(ctx, system, parts, user_text, self._cache_key(fields, where))
        model = self._params(ctx)["model"]
        tokens = [img.tokens_for(model) for img in images]  # the model's own image rule
        outputs[f"{self.options.output}_image_tokens"] = None if None in tokens else sum(t or 0 for t in tokens)
        return outputs


@hookimpl
def register_steps(register: Any) -> None:
    register("describe_image", DescribeImageStep)

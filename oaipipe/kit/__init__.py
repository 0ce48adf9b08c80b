"""The plugin kit: the public, documented helpers every real plugin needs (docs/plugins.md, "The plugin kit").

The built-in plugins are written with it; a plugin of your own imports the same names from here::

    from oaipipe.kit import FileSource, JsonlAppendingSink, ChatStepMixin, HTTPBackendMixin

=========================  ================================================================================
module                     what it gives
=========================  ================================================================================
:mod:`oaipipe.kit.sources`  :class:`FileSource` (``path`` resolved against the pipeline file, a clear error
                           when it is missing), :func:`guarded_record` (one bad record fails alone, naming
                           its line), :func:`unique_id_record`, :func:`count_lines`, :func:`read_lines`, and
                           for sources of rows in batches :func:`records_of_batches`, :func:`check_columns`
:mod:`oaipipe.kit.sinks`    :class:`AppendingSink` / :class:`JsonlAppendingSink` (append and flush per record,
                           every record exactly once on resume: :func:`reconcile_jsonl`, :func:`start_over`;
                           an output it will not write: :func:`refused_output`)
:mod:`oaipipe.kit.columnar` :class:`ColumnarSink` (a row log that survives a kill, turned into Arrow batches
                           on ``close()``: how the Parquet and Hugging Face sinks are written)
:mod:`oaipipe.kit.chat`     :class:`ChatStepOptions` and :class:`ChatStepMixin` (prompt templates, presets,
                           structured output: what the ``ask`` and ``describe_image`` steps share)
:mod:`oaipipe.kit.http`     :class:`HTTPBackendOptions` and :class:`HTTPBackendMixin` (keys, URLs, retries,
                           the chat and Responses bodies, HTTP errors as classified errors)
:mod:`oaipipe.kit.openai`   :class:`OpenAISDKMixin` (the official SDK's clients for a backend on
                           :class:`HTTPBackendMixin`) and :func:`translate_sdk_error` (an SDK exception as
                           the classified error the retry policy knows)
=========================  ================================================================================

The names load lazily (importing ``oaipipe.kit`` imports none of its modules until a name is used), so a
plugin that needs one helper does not pay for the others. Every name here is public API: it keeps its
meaning across minor versions.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .chat import ChatStepMixin, ChatStepOptions
    from .columnar import ColumnarSink, arrow_batches, decode_row, encode_value
    from .http import OPENAI_BASE_URL, HTTPBackendMixin, HTTPBackendOptions, http_error, not_the_api
    from .openai import OpenAISDKMixin, translate_sdk_error
    from .sinks import (
        MODE_FIELD_DOC,
        AppendingSink,
        JsonlAppendingSink,
        first_line,
        jsonl_written_by,
        reconcile_jsonl,
        refused_output,
        start_over,
        unfinished,
        utc_now,
    )
    from .sources import (
        COUNT_LIMIT_BYTES,
        MAX_LINE_BYTES,
        MAX_NESTING,
        FileOptions,
        FileOptionsT,
        FileSource,
        check_columns,
        checked_path,
        count_lines,
        describe_parse_failure,
        did_you_mean,
        guarded_record,
        line_too_long,
        missing_file_error,
        numbered,
        read_lines,
        records_of_batches,
        too_deep,
        unique_id_record,
        wanted_columns,
    )

#: public name -> the kit module that defines it
_WHERE: dict[str, str] = {
    **dict.fromkeys(["ChatStepMixin", "ChatStepOptions"], "chat"),
    **dict.fromkeys(["ColumnarSink", "arrow_batches", "decode_row", "encode_value"], "columnar"),
    **dict.fromkeys(["OPENAI_BASE_URL", "HTTPBackendMixin", "HTTPBackendOptions", "http_error", "not_the_api"],
                    "http"),
    **dict.fromkeys(["OpenAISDKMixin", "translate_sdk_error"], "openai"),
    **dict.fromkeys(["MODE_FIELD_DOC", "AppendingSink", "JsonlAppendingSink", "first_line", "jsonl_written_by",
                     "reconcile_jsonl", "refused_output", "start_over", "unfinished", "utc_now"], "sinks"),
    **dict.fromkeys(["COUNT_LIMIT_BYTES", "MAX_LINE_BYTES", "MAX_NESTING", "FileOptions", "FileOptionsT", "FileSource", "check_columns",
                     "checked_path", "count_lines", "describe_parse_failure", "did_you_mean", "guarded_record",
                     "line_too_long", "missing_file_error", "numbered", "read_lines", "records_of_batches",
                     "too_deep", "unique_id_record", "wanted_columns"], "sources"),
}

__all__ = [
    "COUNT_LIMIT_BYTES",
    "MAX_LINE_BYTES",
    "MAX_NESTING",
    "MODE_FIELD_DOC",
    "OPENAI_BASE_URL",
    "AppendingSink",
    "ChatStepMixin",
    "ChatStepOptions",
    "ColumnarSink",
    "FileOptions",
    "FileOptionsT",
    "FileSource",
    "HTTPBackendMixin",
    "HTTPBackendOptions",
    "JsonlAppendingSink",
    "OpenAISDKMixin",
    "arrow_batches",
    "check_columns",
    "checked_path",
    "count_lines",
    "decode_row",
    "describe_parse_failure",
    "did_you_mean",
    "encode_value",
    "first_line",
    "guarded_record",
    "http_error",
    "jsonl_written_by",
    "line_too_long",
    "missing_file_error",
    "not_the_api",
    "numbered",
    "read_lines",
    "reconcile_jsonl",
    "records_of_batches",
    "refused_output",
    "start_over",
    "too_deep",
    "translate_sdk_error",
    "unfinished",
    "unique_id_record",
    "utc_now",
    "wanted_columns",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'oaipipe.kit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""JSON Schema of pipeline.yaml with every registered plugin's options, for editors and ``oaipipe schema``."""

from __future__ import annotations

from typing import Any

from .config import PipelineConfig, load_config
from .plugins import PluginHost

__all__ = ["pipeline_schema", "plugin_host_for"]


def plugin_host_for(pipeline: str | None = None, disabled: list[str] | None = None) -> PluginHost:
    """A plugin host with the built-ins, entry points and (optionally) a pipeline's own plugins."""
    if pipeline is None:
        return PluginHost(disabled=disabled or [])
    loaded = load_config(pipeline)
    host = PluginHost(base_dir=loaded.base_dir, disabled=[*loaded.config.disable_plugins, *(disabled or [])],
                      pipeline_file=str(pipeline))
    for item in loaded.config.plugins:
        host.load(item)
    return host


def _component_schemas(host: PluginHost, kind: str, defs: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name in host.names(kind):
        reg = host.registry[kind][name]
        schema = reg.cls.Options.model_json_schema(ref_template="#/$defs/{model}")
        for key, value in schema.pop("$defs", {}).items():
            defs.setdefault(key, value)
        props = schema.setdefault("properties", {})
        props["type"] = {"const": name, "description": (reg.cls.__doc__ or "").strip().split("\n")[0]}
        required = schema.setdefault("required", [])
        if "type" not in required:
            required.insert(0, "type")
        schema["title"] = f"{kind} {name}"
        schema["additionalProperties"] = False
        out.append(schema)
    return out


_ENV_REF = {"type": "string", "pattern": r"^\$\{env:[A-Za-z_][A-Za-z0-9_]*(:-.*)?\}$",
            "description": "${env:VAR} (or ${env:VAR:-default}), read when the pipeline is loaded"}


def _allow_env_refs(node: Any) -> Any:
    """Let every number/boolean field also hold ``${env:VAR}``, as ``oaipipe validate`` accepts."""
    if isinstance(node, list):
        return [_allow_env_refs(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _allow_env_refs(v) for k, v in node.items()}
    if out.get("type") in ("integer", "number", "boolean"):
        return {"anyOf": [out, _ENV_REF]}
    return out


def pipeline_schema(pipeline: str | None = None) -> dict[str, Any]:
    """The whole file's schema: the top level from :class:`PipelineConfig`, plugin blocks as ``oneOf``."""
    host = plugin_host_for(pipeline)
    schema = PipelineConfig.model_json_schema(ref_template="#/$defs/{model}")
    defs = schema.setdefault("$defs", {})
    props = schema["properties"]
    for key, kind in (("backend", "backend"), ("source", "source"), ("train", "trainer")):
        variants = _component_schemas(host, kind, defs)
        desc = props.get(key, {}).get("description", "")
        props[key] = {"oneOf": variants, "description": desc or f"a {kind} plugin block"}
        if key == "train":
            props[key] = {"anyOf": [{"oneOf": variants}, {"type": "null"}]}
    steps = _component_schemas(host, "step", defs)
    analyzers = _component_schemas(host, "analyzer", defs)
    analyzer_ref = {"anyOf": [{"enum": host.names("analyzer")}, {"oneOf": analyzers}],
                    "description": "An analyzer name, or {type: NAME, ...options}"}
    for step in steps:
        if "analyzer" in step.get("properties", {}):
            step["properties"]["analyzer"] = analyzer_ref
    props["steps"] = {"type": "array", "items": {"oneOf": steps}}
    props["sinks"] = {"type": "array", "items": {"oneOf": _component_schemas(host, "sink", defs)}}
    schema = _allow_env_refs(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "oaipipe pipeline"
    return schema

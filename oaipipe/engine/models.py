"""The engine's model list: a few base model ids plus the ``ft:`` models trained locally."""

from __future__ import annotations

from dataclasses import dataclass

from ..models_table import DEFAULT_MODEL
from .errors import ModelNotFound
from .tuning import list_local_models, load_local_model

__all__ = ["BASE_MODELS", "EngineModel", "find_model", "list_models"]

#: base ids the engine answers for (any other non-``ft:`` id is answered too, labelled the same way)
BASE_MODELS: tuple[str, ...] = (
    DEFAULT_MODEL,  # what a pipeline without `model:` calls
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-4.1",
    "gpt-5-mini",
)
_CREATED = 1_700_000_000  # a fixed timestamp keeps the listing deterministic


@dataclass(frozen=True)
class EngineModel:
    id: str
    created: int
    owned_by: str

    def to_openai(self) -> dict[str, object]:
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": self.owned_by}


def list_models() -> list[EngineModel]:
    """Base models first, then locally fine-tuned models (oldest first)."""
    out = [EngineModel(m, _CREATED, "oaipipe-local") for m in BASE_MODELS]
    trained = sorted(list_local_models(), key=lambda m: (m.created, m.id))
    out += [EngineModel(m.id, m.created, "oaipipe-local-user") for m in trained]
    return out


def find_model(model_id: str) -> EngineModel | None:
    """The listed model with this id (``None`` if it is neither a base id nor a trained ``ft:`` model)."""
    if model_id in BASE_MODELS:
        return EngineModel(model_id, _CREATED, "oaipipe-local")
    if model_id.startswith("ft:"):
        try:
            model = load_local_model(model_id)
        except ModelNotFound:  # a damaged file: not listed either (chat calls say why)
            return None
        if model is not None:
            return EngineModel(model.id, model.created, "oaipipe-local-user")
    return None

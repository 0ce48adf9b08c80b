"""Heavy libraries imported on first use, so that ``oaipipe --help`` and ``oaipipe validate`` stay fast.

``openai = lazy_module("openai")`` binds a stand-in that imports the real module the first time one of its
attributes is read (``openai.OpenAIError``, ``Image.open``); until then the library is not in
``sys.modules`` at all. Write the real import under ``if TYPE_CHECKING:`` next to it so that type checkers
see the module::

    if TYPE_CHECKING:
        import openai
    else:
        openai = lazy_module("openai")

A plain library: it imports nothing from oaipipe (the engine and the server use it too).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Any

__all__ = ["lazy_module", "missing_libraries"]


class _LazyModule:
    __slots__ = ("_lazy_name", "_lazy_module")

    def __init__(self, name: str) -> None:
        self._lazy_name = name
        self._lazy_module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        module = self._lazy_module
        if module is None:
            module = self._lazy_module = importlib.import_module(self._lazy_name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        state = "loaded" if self._lazy_module is not None else "not loaded yet"
        return f"<lazy module {self._lazy_name!r} ({state})>"


def lazy_module(name: str) -> Any:
    """A stand-in for module ``name`` that imports it on the first attribute read."""
    return _LazyModule(name)


def missing_libraries(module: ModuleType) -> list[str]:
    """The top-level packages of ``module``'s lazy stand-ins that are not installed (found without importing
    anything): the plugin host leaves such a built-in plugin out and says what to install, as it does for a
    plugin whose module-level import fails."""
    missing = []
    for value in vars(module).values():
        if isinstance(value, _LazyModule):
            top = value._lazy_name.split(".")[0]
            try:
                found = importlib.util.find_spec(top) is not None
            except (ImportError, ValueError):  # a broken entry in sys.modules
                found = False
            if not found and top not in missing:
                missing.append(top)
    return missing

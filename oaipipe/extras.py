"""Optional dependencies: import a heavy library where it is used, or say which extra installs it.

``require("pyarrow", extra="parquet", feature="the parquet source")`` returns the module, or raises a
:class:`~oaipipe.errors.ConfigError` (exit code 2) that names the extra: ``pip install 'oaipipe[parquet]'``.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import ConfigError

__all__ = ["EXTRAS", "missing", "require"]

#: extra -> the distributions it installs (as in pyproject.toml)
EXTRAS: dict[str, tuple[str, ...]] = {
    "parquet": ("pyarrow",),
    "hf": ("datasets", "pyarrow"),
    "excel": ("openpyxl",),
    "report": ("plotly",),
    "pandas": ("pandas",),
    "ray": ("ray",),
}


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module`` (e.g. ``pyarrow.parquet``); a missing one is a ConfigError naming ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise ConfigError(
            f"{feature} needs the Python package '{top}', which is not installed ({exc})",
            hint=f"install the extra: pip install 'oaipipe[{extra}]'",
        ) from None


def missing(module: str, *, extra: str, feature: str) -> ConfigError | None:
    """The error :func:`require` would raise for ``module``, found without importing it (a check that
    costs nothing at ``validate`` or a run's start), or None when it is installed."""
    if importlib.util.find_spec(module) is not None:
        return None
    return ConfigError(f"{feature} needs the Python package '{module}', which is not installed",
                       hint=f"install the extra: pip install 'oaipipe[{extra}]'")

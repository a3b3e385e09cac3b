"""Loads user-written Python modules: a file path or an importable module name.

A user module is any Python file that creates ``core.Module`` objects at import time;
every ``Module`` found at its top level is loaded. Invariant: loading never edits voicehub
and a failing import is reported with the file it came from.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from core.module import Module


class ModuleLoadError(Exception):
    pass


def _import(spec: str) -> ModuleType:
    path = Path(spec)
    if spec.endswith(".py") or path.exists():
        if not path.is_file():
            raise ModuleLoadError(f"module file {spec!r} does not exist")
        name = f"voicehub_user_{path.stem}"
        ispec = importlib.util.spec_from_file_location(name, path)
        if ispec is None or ispec.loader is None:
            raise ModuleLoadError(f"cannot load {spec!r} as a Python module")
        mod = importlib.util.module_from_spec(ispec)
        sys.modules[name] = mod
        try:
            ispec.loader.exec_module(mod)
        except Exception as e:
            raise ModuleLoadError(f"loading {spec}: {type(e).__name__}: {e}") from e
        return mod
    try:
        return importlib.import_module(spec)
    except Exception as e:
        raise ModuleLoadError(f"importing {spec!r}: {type(e).__name__}: {e}") from e


def load_modules(spec: str) -> list[Module]:
    """Every ``Module`` defined at the top level of ``spec`` (a path or a module name)."""
    py = _import(spec)
    found = [v for v in vars(py).values() if isinstance(v, Module)]
    if not found:
        raise ModuleLoadError(f"{spec}: defines no voicehub Module")
    return found

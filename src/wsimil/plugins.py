"""What the method and experiment registries share: importing the built-in modules that register themselves, and
loading the installed packages' entry points, each with where it came from named."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Container, Mapping

from wsimil.io import WsimilError


def import_builtins(listed: Mapping[str, str], package: str, registered: Container[str], what: str) -> None:
    """Import ``package + module`` for every module of ``listed`` (name -> module, :mod:`wsimil.names`), and refuse
    a listed name that no module registered (``what``: the list's name in errors)."""
    for module in dict.fromkeys(listed.values()):
        importlib.import_module(package + module)
    missing = [name for name in listed if name not in registered]
    if missing:
        raise WsimilError(f"wsimil.names.{what} lists names that no module registered: {missing}")


def load_entry_points(group: str, register_from: Callable[[str, Callable[[], Any]], Any]) -> None:
    """Call ``register_from(origin, load)`` for every installed entry point of ``group``; ``origin`` names the
    entry point, what it points at and its package, for the registry's messages."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=group):
        package = getattr(ep.dist, "name", None) or "?"
        register_from(f"plugin {ep.name} ({ep.value}, package {package})", ep.load)


def unknown_name(kind: str, name: str, known: list[str]) -> WsimilError:
    """The error for a name no registry holds: the closest known name suggested, then every known one."""
    import difflib

    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return WsimilError(f"unknown {kind} {name!r}{hint} available: {', '.join(known)}")

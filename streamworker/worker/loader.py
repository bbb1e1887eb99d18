"""Import the user's handler: ``"package.module:function"`` from the function's code folder."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["HandlerLoadError", "LoadedHandler", "is_coroutine_callable", "load_handler"]

INIT_CONTEXT_NAME = "init_context"


class HandlerLoadError(Exception):
    """The handler cannot be loaded; the message is one line naming the module and function."""


@dataclass(frozen=True)
class LoadedHandler:
    handler: Callable[..., Any]
    init_context: Callable[..., Any] | None
    is_async: bool
    init_is_async: bool
    module_name: str = ""
    function_name: str = ""


def is_coroutine_callable(fn: object) -> bool:
    """``async def`` functions, ``functools.partial`` of them, and objects with an async ``__call__``."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - we want the method itself, not callable()
    return call is not None and inspect.iscoroutinefunction(call)


def _module_file(module_name: str, code_dir: str) -> str:
    """Where the module is expected, for messages: code_dir/pkg/mod.py."""
    return os.path.join(code_dir, *module_name.split(".")) + ".py"


def load_handler(code_dir: str, handler: str) -> LoadedHandler:
    """Put ``code_dir`` first on ``sys.path``, import the handler's module and return its function
    (and the module's ``init_context``, if any). Raises ``HandlerLoadError``."""
    module_name, sep, function_name = handler.strip().rpartition(":")
    if not sep or not module_name or not function_name:
        raise HandlerLoadError(
            f"handler {handler!r} is not of the form 'package.module:function' (e.g. 'main:handler')"
        )
    code_dir = os.path.abspath(code_dir)
    if code_dir in sys.path:
        sys.path.remove(code_dir)
    sys.path.insert(0, code_dir)
    importlib.invalidate_caches()

    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:  # SyntaxError, SystemExit at import time, anything: report it
        if isinstance(exc, KeyboardInterrupt):
            raise
        detail = " ".join(str(exc).split())  # one line, even for SyntaxError's multi-line text
        raise HandlerLoadError(
            f"cannot import handler module {module_name!r} (handler '{module_name}:{function_name}') "
            f"from {code_dir}: {type(exc).__name__}: {detail}"
        ) from exc

    where = getattr(module, "__file__", None) or _module_file(module_name, code_dir)
    try:
        fn = getattr(module, function_name)
    except AttributeError:
        raise HandlerLoadError(
            f"handler module {module_name!r} ({where}) has no function {function_name!r}"
        ) from None
    if not callable(fn):
        raise HandlerLoadError(f"'{module_name}:{function_name}' is not callable")

    init = getattr(module, INIT_CONTEXT_NAME, None)
    if init is not None and not callable(init):
        raise HandlerLoadError(f"'{module_name}:{INIT_CONTEXT_NAME}' is not callable")
    return LoadedHandler(
        handler=fn,
        init_context=init,
        is_async=is_coroutine_callable(fn),
        init_is_async=init is not None and is_coroutine_callable(init),
        module_name=module_name,
        function_name=function_name,
    )

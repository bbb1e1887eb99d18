"""Import the user's handler: ``"package.module:function"`` from the function's code folder."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "HandlerLoadError",
    "LoadedHandler",
    "error_location",
    "format_traceback",
    "is_coroutine_callable",
    "load_handler",
]

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


def error_location(exc: BaseException, code_dir: str | None = None) -> str | None:
    """``file:line`` where ``exc`` happened, for one-line messages; None when unknown.

    A SyntaxError points at the bad line itself. Otherwise, with ``code_dir``, the innermost frame
    inside it (the user's code) wins over frames in libraries it called, so a ``raise`` inside
    ``json`` still points at the user's line that called it; no such frame (the handler's module
    does not exist: only importlib's frames) gives None. Without ``code_dir``, the innermost frame.
    """
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f"{exc.filename}:{exc.lineno}"
    frames: list[traceback.FrameSummary] = list(traceback.extract_tb(exc.__traceback__))
    if code_dir is not None:
        root = os.path.join(os.path.abspath(code_dir), "")
        frames = [frame for frame in frames if os.path.abspath(frame.filename).startswith(root)]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None


def format_traceback(exc: BaseException, code_dir: str | None = None) -> str:
    """The traceback of the user's error: the cause of a ``HandlerLoadError``, not our re-raise.

    With ``code_dir``, frames before the first one in the user's code (our loader, importlib) are
    left out: they are the same for every import and bury the lines that matter.
    """
    if isinstance(exc, HandlerLoadError) and exc.__cause__ is not None:
        exc = exc.__cause__
    report = traceback.TracebackException.from_exception(exc)
    if code_dir is not None:
        root = os.path.join(os.path.abspath(code_dir), "")
        starts = [
            i for i, frame in enumerate(report.stack) if os.path.abspath(frame.filename).startswith(root)
        ]
        if starts:
            report.stack = traceback.StackSummary.from_list(report.stack[starts[0] :])
    return "".join(report.format())


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
        location = error_location(exc, code_dir)
        at = f" (at {location})" if location else ""
        raise HandlerLoadError(
            f"cannot import handler module {module_name!r} (handler '{module_name}:{function_name}') "
            f"from {code_dir}: {type(exc).__name__}: {detail}{at}"
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

"""Importing the user's handler from its code folder."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamworker.worker.loader import (
    HandlerLoadError,
    error_location,
    format_traceback,
    is_coroutine_callable,
    load_handler,
)

HANDLERS = Path(__file__).parent / "fixtures" / "handlers"


@pytest.fixture(autouse=True)
def isolated_imports() -> Iterator[None]:
    """Undo sys.path / sys.modules changes so fixture modules do not leak between tests."""
    saved_path = list(sys.path)
    saved_modules = set(sys.modules)
    yield
    sys.path[:] = saved_path
    for name in set(sys.modules) - saved_modules:
        del sys.modules[name]


def test_loads_sync_handler_and_init_context() -> None:
    loaded = load_handler(str(HANDLERS), "basic:handler")
    assert loaded.handler.__name__ == "handler"
    assert loaded.init_context is not None and loaded.init_context.__name__ == "init_context"
    assert not loaded.is_async and not loaded.init_is_async
    assert sys.path[0] == str(HANDLERS)


def test_detects_async_handler_and_init_context() -> None:
    loaded = load_handler(str(HANDLERS), "async_app:handler")
    assert loaded.is_async and loaded.init_is_async


def test_no_init_context() -> None:
    loaded = load_handler(str(HANDLERS), "nested.deeper.entry:handle")
    assert loaded.init_context is None and not loaded.init_is_async


def test_dotted_module_path_maps_to_folders() -> None:
    loaded = load_handler(str(HANDLERS), "nested.deeper.entry:handle")
    assert loaded.handler(None, None) == "nested"
    assert (loaded.module_name, loaded.function_name) == ("nested.deeper.entry", "handle")


def test_missing_module() -> None:
    with pytest.raises(HandlerLoadError) as info:
        load_handler(str(HANDLERS), "does_not_exist:handler")
    message = str(info.value)
    assert message == (
        f"cannot import handler module 'does_not_exist' (handler 'does_not_exist:handler') from {HANDLERS}: "
        "ModuleNotFoundError: No module named 'does_not_exist'"
    )


def test_module_with_failing_import() -> None:
    with pytest.raises(HandlerLoadError) as info:
        load_handler(str(HANDLERS), "broken_import:handler")
    assert str(info.value) == (
        f"cannot import handler module 'broken_import' (handler 'broken_import:handler') from {HANDLERS}: "
        "ModuleNotFoundError: No module named 'definitely_not_an_installed_module_xyz' "
        f"(at {HANDLERS / 'broken_import.py'}:1)"
    )
    assert "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_syntax_error_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad_syntax_mod.py").write_text("def handler(:\n    pass\n")
    with pytest.raises(HandlerLoadError) as info:
        load_handler(str(tmp_path), "bad_syntax_mod:handler")
    message = str(info.value)
    assert message.startswith(
        "cannot import handler module 'bad_syntax_mod' (handler 'bad_syntax_mod:handler') from "
    )
    assert "SyntaxError" in message and "\n" not in message
    assert message.endswith(f"(at {tmp_path / 'bad_syntax_mod.py'}:1)")


def test_location_is_the_users_line_not_the_library_it_called(tmp_path: Path) -> None:
    (tmp_path / "calls_json.py").write_text("import json\n\nSETTINGS = json.loads('{')\n")
    with pytest.raises(HandlerLoadError) as info:
        load_handler(str(tmp_path), "calls_json:handler")
    assert str(info.value).endswith(f"(at {tmp_path / 'calls_json.py'}:3)")
    cause = info.value.__cause__
    assert cause is not None
    # Without the code folder the innermost frame is json's own; with it, the user's line.
    assert str(error_location(cause)).startswith(str(Path(json.__file__).parent))
    assert error_location(cause, str(tmp_path)) == f"{tmp_path / 'calls_json.py'}:3"
    trace = format_traceback(info.value, str(tmp_path)).splitlines()
    assert trace[1] == f'  File "{tmp_path / "calls_json.py"}", line 3, in <module>'
    assert trace[-1].startswith("json.decoder.JSONDecodeError: ")


def test_missing_function() -> None:
    with pytest.raises(HandlerLoadError) as info:
        load_handler(str(HANDLERS), "basic:handle")
    assert str(info.value) == f"handler module 'basic' ({HANDLERS / 'basic.py'}) has no function 'handle'"


def test_not_callable() -> None:
    with pytest.raises(HandlerLoadError, match=r"^'not_callable:handler' is not callable$"):
        load_handler(str(HANDLERS), "not_callable:handler")


def test_init_context_not_callable() -> None:
    with pytest.raises(HandlerLoadError, match=r"^'not_callable:init_context' is not callable$"):
        load_handler(str(HANDLERS), "not_callable:other")


@pytest.mark.parametrize("spec", ["main", "main:", ":handler", ""])
def test_bad_handler_string(spec: str) -> None:
    with pytest.raises(HandlerLoadError, match=r"package\.module:function"):
        load_handler(str(HANDLERS), spec)


def test_code_dir_comes_first_and_shadows_stdlib(monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker imports the handler in a fresh process; mimic that for this module name.
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    loaded = load_handler(str(HANDLERS / "shadow"), "colorsys:handler")
    assert loaded.handler(None, None) == "shadowed"
    assert sys.modules["colorsys"].SHADOWED is True
    assert sys.path[0] == str(HANDLERS / "shadow")


def test_code_dir_moved_to_front_if_already_on_path() -> None:
    sys.path.append(str(HANDLERS))
    load_handler(str(HANDLERS), "basic:noop")
    assert sys.path[0] == str(HANDLERS)
    assert sys.path.count(str(HANDLERS)) == 1


def test_is_coroutine_callable() -> None:
    import functools

    async def coro(context: object, event: object) -> None: ...

    class AsyncCallable:
        async def __call__(self, context: object, event: object) -> None: ...

    assert is_coroutine_callable(coro)
    assert is_coroutine_callable(functools.partial(coro, None))
    assert is_coroutine_callable(AsyncCallable())
    assert not is_coroutine_callable(len)

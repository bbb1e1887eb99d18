"""``python -m streamworker.worker.check RESULT_FILE CODE_DIR HANDLER``: import a handler, report, exit.

``streamworker validate`` runs this in a child process with the function's environment, so user code
(module-level statements of the handler's module) never runs inside the CLI process. The outcome is
written as JSON to RESULT_FILE rather than stdout, which the handler's module may print to.
``init_context`` is not called: it usually connects to other services.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from streamworker.worker.loader import HandlerLoadError, error_location, format_traceback, load_handler


def main(argv: Sequence[str] | None = None) -> int:
    result_file, code_dir, handler = list(sys.argv[1:] if argv is None else argv)
    try:
        loaded = load_handler(code_dir, handler)
    except HandlerLoadError as exc:
        outcome: dict[str, object] = {"ok": False, "error": str(exc)}
        cause = exc.__cause__
        # Only a traceback that reaches the user's code says more than the message (a missing
        # module or function has nothing but importlib's frames).
        if cause is not None and error_location(cause, code_dir) is not None:
            outcome["traceback"] = format_traceback(exc, code_dir)
    else:
        outcome = {
            "ok": True,
            "async": loaded.is_async,
            "init_context": loaded.init_context is not None,
        }
    Path(result_file).write_text(json.dumps(outcome), encoding="utf-8")
    return 0 if outcome["ok"] else 3


if __name__ == "__main__":
    sys.exit(main())

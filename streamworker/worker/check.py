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

from streamworker.worker.loader import HandlerLoadError, load_handler


def main(argv: Sequence[str] | None = None) -> int:
    result_file, code_dir, handler = list(sys.argv[1:] if argv is None else argv)
    try:
        loaded = load_handler(code_dir, handler)
    except HandlerLoadError as exc:
        outcome: dict[str, object] = {"ok": False, "error": str(exc)}
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

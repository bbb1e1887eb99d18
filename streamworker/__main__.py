"""``python -m streamworker`` is the ``streamworker`` command."""

import sys

from streamworker.cli import main

sys.exit(main())

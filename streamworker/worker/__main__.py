"""``python -m streamworker.worker --in-fd N --out-fd M``: a worker process (see ``process``)."""

import sys

from streamworker.worker.process import main

if __name__ == "__main__":
    sys.exit(main())

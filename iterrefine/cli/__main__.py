"""``python -m iterrefine.cli``: the same entry point as the ``iterrefine`` script."""

import sys

from iterrefine.cli import main

sys.exit(main())

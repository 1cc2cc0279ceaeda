"""``python -m dmad``: the same entry point as the ``dmad`` console script."""

import sys

from dmad.cli import main

sys.exit(main())

"""``python -m tfquant.cli ...``: the ``tfquant`` command."""

import sys

from tfquant.cli.app import main

sys.exit(main())

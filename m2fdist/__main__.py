"""``python -m m2fdist COMMAND ...``: the ``m2fdist`` command without its console script."""

import sys

from m2fdist.cli import main

sys.exit(main())

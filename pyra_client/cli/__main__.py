"""``python -m pyra_client.cli``: the ``pyra`` command without the console script."""

import sys

from pyra_client.cli import main

sys.exit(main())

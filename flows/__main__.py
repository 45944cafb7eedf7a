"""`python -m flows`: see `flows.cli`."""

import sys

from flows.cli import main

sys.exit(main())

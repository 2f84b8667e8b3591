"""`python -m shoal.cli ...`: how shoal starts its own children (daemons, master, gateway)."""

import sys

from shoal.cli import main

sys.exit(main())

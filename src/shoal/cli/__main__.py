"""`python -m shoal.cli ...`: how shoal starts its own children (daemons, master, gateway)."""

import sys

from shoal.parent import die_with_parent

die_with_parent()

from shoal.cli import main  # noqa: E402 - after the child has tied itself to its parent

sys.exit(main())

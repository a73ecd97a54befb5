"""``python -m agent`` runs the accelwatch CLI."""

import sys

from agent.cli import main

sys.exit(main())

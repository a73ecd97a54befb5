"""``python -m agent`` runs the accelwatch CLI."""

import sys

from agent.app.cli import main

sys.exit(main())

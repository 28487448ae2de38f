"""`python -m agent` runs the daemon (same as `agentd`)."""

import sys

from agent.core.launch import main

sys.exit(main())

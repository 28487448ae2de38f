"""agentctl verbs, one module per capability; each has `register(subparsers)`.

A verb's handler takes (args, client) and returns an exit code; it raises CliError for a
one-line failure. Modules listed in VERB_MODULES that are not present yet are skipped.
"""

from __future__ import annotations

VERB_MODULES = (
    "agent.cli.read",
    "agent.cli.control",
    "agent.cli.events",
    "agent.cli.billing",
)

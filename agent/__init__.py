"""container-agent: daemon, model, store, API, exporters, control and agentctl."""

__version__ = "0.1.0"

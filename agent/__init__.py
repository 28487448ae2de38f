"""container-agent: daemon, model, store, API, exporters, control and agentctl."""

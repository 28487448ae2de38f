"""The built-in web UI (page, static files, history ring) served on the read-only HTTP port."""

"""Invoice-grade usage accounting: per-incarnation meters, UTC periods, exports."""

"""Grafana dashboards written with grafanalib."""

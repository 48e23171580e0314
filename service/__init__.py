"""Engram's service layer (HTTP, registry, jobs, worker). For now: the command-line entry point."""

"""Pantries: the HTTP client, retries, the inventory, selection, and a simulator.

Nothing here imports udx.cli.
"""

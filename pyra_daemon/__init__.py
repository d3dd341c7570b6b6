"""Pyra's daemon: the one process that owns conversations, memory, the vault and the tools."""

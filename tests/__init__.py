"""Pyra's test suite."""

"""Benchmarks and test stand-ins for the Dolphin connector."""

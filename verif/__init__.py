"""Verification: cocotb 2 testbenches, scoreboards against ``model/``, and benchmarks."""

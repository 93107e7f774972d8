"""Amaranth 0.5 RTL of the V-Rex dynamic KV-cache retrieval engine (DRE)."""

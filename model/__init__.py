"""PyTorch golden model of V-Rex: ReSV, baselines, metrics and the bit-exact DRE reference."""

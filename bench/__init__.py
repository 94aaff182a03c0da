"""Benchmarks with their baselines, each a module run from the repository's root:
`python -m bench.<name>` (bench/README.md has the figures and the commands)."""

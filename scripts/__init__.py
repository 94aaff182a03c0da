"""The GPU smoke checks run as modules from the repository's root (`python -m
scripts.gpu_smoke`, `python -m scripts.gpu_train_smoke`); the shell scripts beside them are
run with bash."""

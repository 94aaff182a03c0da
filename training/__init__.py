"""The training chain (SFT, TIR data, KTO, GPTQ), each step a module run from the repository's
root: `python -m training.<step>` (training/README.md)."""

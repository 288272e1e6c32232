"""TransferKit's recipes, installed as `transferkit.recipes` (run with `python -m` or `accelerate launch -m`)."""

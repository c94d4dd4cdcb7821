"""Interoperability with upstream NequIP (the ``nequip`` package, 0.19): building upstream models,
transferring their weights, importing their files and accelerating their training.

Upstream NequIP is an optional dependency (``pip install nequip==0.19.1``); nothing here imports it
at module load."""

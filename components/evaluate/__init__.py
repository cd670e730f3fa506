"""Stage 4: evaluate the exported SavedModel on held-out records and decide whether it may be deployed."""

"""udx: keeps a Pantry-attached export for every live snapshot and image."""

__version__ = "0.1.0"

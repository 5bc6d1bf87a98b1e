"""blindspot: find and explain the blind spots of neural networks (Szegedy et al., 2013)."""

__version__ = "0.1.0"

"""A fake VASP that speaks VASP's files and interactive stream protocol (see README.md)."""

__version__ = "0.1.0"

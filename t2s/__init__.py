"""t2s: learn agent skills from execution traces with local models, every lesson a git commit."""

__version__ = "0.1.0"

"""Backend base classes and the built-in provider backends."""

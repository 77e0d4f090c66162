"""Developer tools run by the Makefile (type checking through the namespace map)."""

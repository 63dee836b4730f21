"""The package version, in a module of its own (no imports), so anything can read it without importing `sdlora`."""

__version__ = "0.1.0"

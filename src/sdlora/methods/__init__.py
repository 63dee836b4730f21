"""Continual-learning methods, one module each, registered in `sdlora.registry.METHODS`."""

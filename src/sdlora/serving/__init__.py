"""Serving a finished run: `predict` (and `sdlora.load`), `learn` (more tasks of new classes later) and their I/O.

Above the engine: everything here reads a run folder through `sdlora.engine.run_folder.RunFolder`, builds its
model with `sdlora.engine.build.build_model` and continues it with the engine's own `Trainer`.
"""

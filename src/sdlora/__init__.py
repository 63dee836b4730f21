"""sdlora: rehearsal-free class-incremental learning on pre-trained transformers with SD-LoRA."""

__version__ = "0.1.0"

"""sdlora: rehearsal-free class-incremental learning on pre-trained transformers with SD-LoRA."""

from sdlora._version import __version__

__all__ = ["SDLoRAConfig", "SDLoRAModel", "__version__", "get_sdlora_model", "load"]


def __getattr__(name: str):  # lazy: `import sdlora` stays light
    if name in ("get_sdlora_model", "SDLoRAModel"):
        from sdlora import model_api

        return getattr(model_api, name)
    if name == "load":
        from sdlora.serving.predict import load

        return load
    if name == "SDLoRAConfig":
        from sdlora.adapters import SDLoRAConfig

        return SDLoRAConfig
    raise AttributeError(f"module 'sdlora' has no attribute {name!r}")

"""Code shipped inside `--format hf` export folders and loaded by transformers with `trust_remote_code=True`.

`modeling_sdlora.py` imports only torch, safetensors and transformers: transformers copies it into the export
folder (`save_pretrained` of a class registered with `register_for_auto_class`) and imports it from there.
"""

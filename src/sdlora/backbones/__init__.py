"""Backbones: timm ViTs and Hugging Face encoders behind one interface (`Backbone`)."""

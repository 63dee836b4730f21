"""Is anyone watching? Progress bars and library chatter only for a terminal or a notebook (stdlib only)."""

from __future__ import annotations

import os
import sys
import warnings

#: environment switches the libraries read when they are imported; `quiet_libraries` sets those the user left unset
QUIET_ENVIRONMENT = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub's bars, and transformers' ("Loading weights") follow it
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",  # transformers' advisory `warning_advice` messages
}


def interactive() -> bool:
    """A terminal, or a Jupyter kernel (tqdm.auto draws widgets there, though stderr is no tty)."""
    if sys.stderr.isatty():
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def quiet_libraries() -> None:
    """No progress bars and no deprecation chatter from transformers, huggingface_hub, timm and peft.

    Cheap and import-free: the environment switches act when the libraries are imported later (and in child
    processes); a library already imported gets its switch flipped directly. Warnings the user asked for
    (`-W`, PYTHONWARNINGS) win."""
    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:
        transformers_logging.disable_progress_bar()
    hub_utils = sys.modules.get("huggingface_hub.utils")
    if hub_utils is not None:
        hub_utils.disable_progress_bars()
    if not sys.warnoptions:
        for library in ("peft", "transformers", "timm", "huggingface_hub", "torch"):
            warnings.filterwarnings("ignore", category=FutureWarning, module=rf"{library}(\.|$)")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=rf"{library}(\.|$)")

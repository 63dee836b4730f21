"""Old spellings of config keys: read, moved to their new place, with a `ConfigDeprecationWarning`.

    train.classifier.kind       -> method.classifier.kind        (and .drift, .sdc_sigma)
    train.head_init             -> method.classifier.head_init
    train.head_init_scale       -> method.classifier.head_init_scale
    train.loss                  -> method.classifier.loss
    train.freeze_old_head       -> method.classifier.freeze_old_head
    train.head_lr               -> method.classifier.head_lr

Config files, `--set` and the config.yaml of run folders written before the move (read back by `sdlora.load`,
`--resume`, `sdlora eval` / `learn` / `export`, through `sdlora.config.load_saved_config`: one warning per file)
all go through `migrate`. Rules:

* an old key moves to `method.classifier`, the classifier place that wins (over the shared top-level
  `classifier:`), so it resolves to exactly the value it had; each moved key gets its own warning;
* a file's old key overrides its bases' new key and vice versa (`shadow`, `--set` alike; a key of the shared
  `classifier:` counts as new); old keys in a base stay inherited as before, also by a child that changes the
  method or sets `classifier: null` (the `train` section was never reset);
* the old and the new key given together (in one file, or after merging) with different values: an error;
* a bad value under an old key is refused with the message it had there (`train.loss: 'x' is not allowed...`),
  before the methods (and torch) are imported;
* an old key whose value the method never honoured (NCM rewrote `kind` and `drift` and had no head, a linear
  probe's features never drift, SDC without prototypes moved nothing) is dropped, as it was ignored before;
  the warning says so. The new key refuses such values (`ClassifierSupport`).
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from sdlora.method_config import HEAD_TRAINING, ClassifierConfig, ClassifierSupport
from sdlora.typed import ConfigError, from_dict


class ConfigDeprecationWarning(DeprecationWarning):
    """A config key under its old name (shown by default, unlike other DeprecationWarnings)."""


if not sys.warnoptions:  # the user's -W / PYTHONWARNINGS choices win
    warnings.filterwarnings("default", category=ConfigDeprecationWarning)

#: old path -> the `method.classifier` setting it became
LEGACY: dict[tuple[str, ...], str] = {
    ("train", "classifier", "kind"): "kind",
    ("train", "classifier", "drift"): "drift",
    ("train", "classifier", "sdc_sigma"): "sdc_sigma",
    ("train", "head_init"): "head_init",
    ("train", "head_init_scale"): "head_init_scale",
    ("train", "loss"): "loss",
    ("train", "freeze_old_head"): "freeze_old_head",
    ("train", "head_lr"): "head_lr",
}
#: the settings that sat in the old `train.classifier` mapping
OLD_SECTION = {path[-1]: name for path, name in LEGACY.items() if path[:2] == ("train", "classifier")}
NEW = ("method", "classifier")
#: the shared top-level `classifier:`, whose keys are new spellings too: one there overrides a base's (or the
#: config's, with --set) old key, which would otherwise win (moved to `method.classifier`)
SHARED = ("classifier",)


def _gives(data: Any, path: tuple[str, ...]) -> bool:
    """Whether merging `data` on top sets `path`: the key itself, or a non-mapping above it (which replaces)."""
    node = data
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
        if not isinstance(node, dict):
            return True
    return True


def _parent(data: Any, path: tuple[str, ...]) -> Any:
    """The mapping that would hold `path`'s last key (None, or a non-mapping, when the way there is missing)."""
    node = data
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _sets(data: Any, path: tuple[str, ...]) -> bool:
    """Whether `data` holds the key `path` itself (`classifier: null`, the method's defaults, sets none)."""
    node = _parent(data, path)
    return isinstance(node, dict) and path[-1] in node


def _pop(data: Any, path: tuple[str, ...]) -> None:
    node = _parent(data, path)
    if isinstance(node, dict):
        node.pop(path[-1], None)


def shadow(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`base` less what `top` gives under the other spelling (in place): a key overrides its other name."""
    for old, name in LEGACY.items():
        new = (*NEW, name)
        if _gives(top, old):
            _pop(base, new)
        if _gives(top, new) or _sets(top, (*SHARED, name)):
            _pop(base, old)
    return base


def shadow_override(data: dict[str, Any], parts: list[str]) -> None:
    """`--set a.b=value` replaces `a.b` whole: drop the other spelling of every setting under it (from the
    sub-section down: `--set train=...` or `--set method=...` leaves the other section's keys alone)."""
    key = tuple(parts)
    if len(key) < 2:
        return
    for old, name in LEGACY.items():
        new = (*NEW, name)
        if old[: len(key)] == key:
            _pop(data, new)
        if new[: len(key)] == key or (*SHARED, name) == key:
            _pop(data, old)


def _support(method: Any) -> ClassifierSupport | None:
    from sdlora.registry import METHODS  # only for configs with old keys: it imports every method

    if not isinstance(method, str) or method not in METHODS:
        return None  # the method section's own check reports it
    return getattr(METHODS.get(method), "classifier_support", None)


def _never_honoured(method: Any, given: dict[str, Any], legacy: set[str]) -> dict[str, str]:
    """The old-spelled settings (`legacy`) that `method` refuses, removed from `given`: name -> why."""
    try:
        cfg = from_dict(ClassifierConfig, given, "method.classifier")
    except ConfigError:
        return {}  # reported with its key when the config is validated (checked first: no methods imported)
    # the head's training defaults are honoured by every method (no need to import them to know)
    legacy = {name for name in legacy if name not in HEAD_TRAINING or given.get(name) != HEAD_TRAINING[name]}
    support = _support(method) if legacy else None
    dropped: dict[str, str] = {}
    while support is not None:
        refused = {n: why for n, why in support.problems(cfg).items() if n in legacy and n not in dropped}
        if not refused:
            break
        for name, why in refused.items():
            dropped[name] = why
            given.pop(name, None)
            cfg = from_dict(ClassifierConfig, given, "method.classifier")
    return dropped


def _old_settings(train: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """Pop the old keys from `train`: setting -> (old key, value). Each value is checked under its old key, with
    the message it had there."""
    found: dict[str, tuple[str, Any]] = {}
    old = train.pop("classifier", None)
    if old is not None and not isinstance(old, dict):
        raise ConfigError(f"train.classifier: expected a mapping, got {old!r} (it is now method.classifier)")
    for key, value in (old or {}).items():
        if key not in OLD_SECTION:
            raise ConfigError(f"train.classifier: unknown key {key!r}; allowed: {', '.join(sorted(OLD_SECTION))} "
                              "(train.classifier is now method.classifier)")
        found[OLD_SECTION[key]] = (f"train.classifier.{key}", value)
    for path, name in LEGACY.items():
        if len(path) == 2 and path[1] in train:
            found[name] = (".".join(path), train.pop(path[1]))
    for name, (key, value) in found.items():
        from_dict(ClassifierConfig, {name: value}, key.rsplit(".", 1)[0])
    return found


def migrate(data: dict[str, Any], source: str = "config", saved: bool = False) -> dict[str, Any]:
    """Move the old keys of `data` (in place) to `method.classifier`, one warning per key; returns `data`.
    `saved`: `data` is a config sdlora wrote into a run folder, which its user has nothing to change in: one
    warning for the file, naming every key it moved."""
    train = data.get("train")
    found = _old_settings(train) if isinstance(train, dict) else {}
    if not found:
        return data
    method = data.get("method")
    if not isinstance(method, dict):
        olds = ", ".join(old for old, _ in found.values())
        raise ConfigError(f"{olds}: moved to method.classifier, but the config has no method mapping")
    if method.get("classifier") is None:
        method["classifier"] = {}
    given = method["classifier"]
    if not isinstance(given, dict):
        raise ConfigError(f"method.classifier: expected a mapping, got {given!r}")
    legacy = set()
    for name, (old, value) in found.items():
        if name in given and given[name] != value:
            raise ConfigError(f"{old} ({value!r}) and method.classifier.{name} ({given[name]!r}) disagree: {old} is "
                              f"the old name of method.classifier.{name}; keep only method.classifier.{name}")
        if name not in given:
            given[name] = value
            legacy.add(name)
    dropped = _never_honoured(method.get("name"), given, legacy)
    if saved:
        olds = ", ".join(old for old, _ in found.values())
        unused = ", ".join(old for name, (old, _) in found.items() if name in dropped)
        warnings.warn(f"{source}: written by an older sdlora, read as before under today's names ({olds}: now "
                      "method.classifier.*" + (f"; {unused}: never used by the method, dropped" if unused else "")
                      + "): nothing to change", ConfigDeprecationWarning, stacklevel=3)
        return data
    for name, (old, value) in found.items():
        message = f"{source}: {old} is now method.classifier.{name} (or classifier.{name}, shared by any method); "
        message += (f"dropped, as the method never used it (method.classifier.{name} refuses it): {old} = {value!r} "
                    f"({dropped[name]})" if name in dropped else "moved")
        warnings.warn(message, ConfigDeprecationWarning, stacklevel=3)
    return data

"""Affine drift compensation (`method.classifier.drift: affine`, `sdlora.methods.drift`): the map against the true
one, the statistics it moves against statistics refitted on the moved features, an SD-LoRA run that resumes to the
same results, and the config's refusals."""

from pathlib import Path

import pytest
import torch

from engine_helpers import check_classifier_refused, check_resume_equals_uninterrupted, tiny_sdlora
from sdlora.config import load_config
from sdlora.engine import build
from sdlora.method_config import AFFINE_RIDGE
from sdlora.methods.class_stats import PooledGaussians
from sdlora.methods.drift import affine_drift
from sdlora.methods.lda import LDAHead
from sdlora.methods.prototypes import ClassPrototypes
from sdlora.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]

DIM = 6
EXACT = 1e-10  # a ridge small enough that an exact affine drift is recovered to float64 rounding


def rotation(seed: int) -> torch.Tensor:
    """A random orthogonal [DIM, DIM] map: it keeps unit-norm features on the sphere, so the LDA head's g moves by
    exactly this map (an affine drift with b = 0 that SDC's per-class translations cannot follow)."""
    q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def unit_features(classes: range, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(10, DIM, generator=g, dtype=torch.float64)
    labels = torch.tensor(list(classes)).repeat_interleave(per_class)
    feats = centres[labels] + 0.4 * torch.randn(labels.shape[0], DIM, generator=g, dtype=torch.float64)
    return torch.nn.functional.normalize(feats, dim=-1), labels


def test_an_exact_affine_drift_is_recovered():
    g = torch.Generator().manual_seed(0)
    before = torch.randn(400, DIM, generator=g, dtype=torch.float64)
    p_true = torch.eye(DIM, dtype=torch.float64) + 0.3 * torch.randn(DIM, DIM, generator=g, dtype=torch.float64)
    b_true = torch.randn(DIM, generator=g, dtype=torch.float64)
    p, b = affine_drift(before, before @ p_true + b_true, EXACT)
    torch.testing.assert_close(p, p_true, atol=1e-8, rtol=0)
    torch.testing.assert_close(b, b_true, atol=1e-8, rtol=0)


def test_a_large_ridge_leaves_a_translation_by_the_mean_drift():
    g = torch.Generator().manual_seed(1)
    before = torch.randn(300, DIM, generator=g, dtype=torch.float64)
    after = before @ rotation(1) + 2.0
    p, b = affine_drift(before, after, 1e9)
    torch.testing.assert_close(p, torch.eye(DIM, dtype=torch.float64), atol=1e-7, rtol=0)
    torch.testing.assert_close(b, (after - before).mean(0), atol=1e-6, rtol=0)


def test_mapped_statistics_equal_the_statistics_of_the_mapped_features():
    """s_c P + n_c b and P^T W P are the running sums of f P + b: the map is exact on the statistics."""
    feats, labels = unit_features(range(4), 30, seed=2)
    p = torch.eye(DIM, dtype=torch.float64) + 0.2 * rotation(3)
    b = torch.linspace(-1, 1, DIM, dtype=torch.float64)
    moved, refit = PooledGaussians(DIM), PooledGaussians(DIM)
    moved.fit(feats, labels, 0, 4)
    moved.map_affine(p, b)
    refit.fit(feats @ p + b, labels, 0, 4)
    for name in ("sums", "counts", "scatter"):
        torch.testing.assert_close(getattr(moved, name), getattr(refit, name), atol=1e-10, rtol=0)


def test_the_lda_head_follows_a_rotation_that_sdc_cannot():
    """Old classes fitted on X; the next task's samples Z move to Z Q. The affine drift gives the head refitted on
    X Q (logits to float32 rounding); SDC, one translation per class, does not (the covariance rotated too)."""
    old, old_labels = unit_features(range(4), 40, seed=4)
    new, new_labels = unit_features(range(4, 8), 40, seed=5)
    q = rotation(6)
    heads = {}
    for drift in ("affine", "sdc", "refit"):
        head = LDAHead(DIM, "oas")
        head.fit((old @ q if drift == "refit" else old).float(), old_labels, 0, 4)
        if drift == "affine":
            shift = head.compensate_affine(new.float(), (new @ q).float(), 4, EXACT)
            assert shift > 0.1
        elif drift == "sdc":
            head.compensate_drift(new.float(), (new @ q).float(), 4, 0.3)
        head.fit((new @ q).float(), new_labels, 4, 8)
        heads[drift] = head.logits((old @ q).float())
    torch.testing.assert_close(heads["affine"], heads["refit"], atol=2e-3, rtol=1e-4)
    assert (heads["sdc"] - heads["refit"]).abs().max() > 0.5


def test_prototypes_move_as_their_features():
    old, old_labels = unit_features(range(3), 20, seed=7)
    new, _ = unit_features(range(3, 6), 20, seed=8)
    p = torch.eye(DIM, dtype=torch.float64) + 0.1 * rotation(9)
    b = torch.full((DIM,), 0.5, dtype=torch.float64)
    moved, refit = ClassPrototypes(DIM), ClassPrototypes(DIM)
    moved.fit(old.float(), old_labels, 0, 3)
    assert moved.compensate_affine(new.float(), (new @ p + b).float(), 3, EXACT) > 0.5
    refit.fit((old @ p + b).float(), old_labels, 0, 3)
    torch.testing.assert_close(moved.means, refit.means, atol=1e-5, rtol=0)


def test_sdlora_with_affine_drift_resumes_to_the_same_results(tmp_path):
    result = check_resume_equals_uninterrupted(tmp_path, tiny_sdlora(kind="lda", drift="affine"), stop_at=(1, 1, False))
    assert all(info["prototype_shift"] > 0 for info in result["task_info"][1:])  # the map moved the means
    resolved = result["config"]["method"]["classifier"]
    assert (resolved["drift"], resolved["affine_ridge"], resolved["sdc_sigma"]) == ("affine", AFFINE_RIDGE, None)


def test_a_shipped_config_switches_to_affine_with_one_key_and_its_resolved_form_loads_again():
    """`--set classifier.drift=affine` on configs/clinc150.yaml; the resolved settings (as config.yaml keeps them
    for `sdlora learn` / `eval`) resolve to themselves."""
    cfg = load_config(ROOT / "configs" / "clinc150.yaml", ["classifier.drift=affine"])
    support = METHODS.get(cfg.method.name).classifier_support
    resolved = build.resolve_classifier(cfg)
    assert (resolved.drift, resolved.affine_ridge, resolved.sdc_sigma) == ("affine", AFFINE_RIDGE, None)
    assert support.resolve(resolved) == resolved


@pytest.mark.parametrize(("method", "classifier", "message"), [
    ("sdlora", {"kind": "lda", "drift": "sdc", "affine_ridge": 1.0}, "affine_ridge tunes drift 'affine'"),
    ("sdlora", {"kind": "lda", "drift": "affine", "sdc_sigma": 0.3}, "sdc_sigma weighs SDC's samples"),
    ("sdlora", {"kind": "lda", "drift": "affine", "random_features": 64}, "a random feature map is not affine"),
    ("sdlora", {"kind": "aligned", "drift": "affine"}, "alignment's per-class statistics take 'sdc'"),
    ("sdlora", {"kind": "linear", "drift": "affine"}, "drift compensation moves the class prototypes"),
    ("sdlora", {"kind": "lda", "drift": "affine", "affine_ridge": 0}, "affine_ridge must be > 0"),
    ("ncm", {"kind": "lda", "drift": "affine"}, "ncm's backbone is frozen"),
])
def test_affine_settings_that_make_no_sense_are_refused(method, classifier, message):
    check_classifier_refused(method, classifier, message)

"""The LDA head from class statistics (`method.classifier.kind: lda`): incremental statistics against the batch
closed form, the head against scikit-learn, order independence, drift compensation, checkpoint / resume, export
and the config's refusals."""

import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine_helpers import check_classifier_refused, check_resume_equals_uninterrupted, tiny
from export_helpers import check_exported_head
from scripts import load_benchmark_script
from sdlora.cli import main
from sdlora.config import load_config
from sdlora.engine import build
from sdlora.engine.restore import restore_run
from sdlora.engine.runner import run_config
from sdlora.method_config import HEAD_TRAINING, ClassifierConfig
from sdlora.methods.class_stats import PooledGaussians
from sdlora.methods.lda import LDAHead, lda_weights, oas_shrinkage

TASKS = [(0, 3), (3, 5), (5, 9)]  # classes [low, high) per task


def class_data(seed: int = 0, dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of 9 classes with unequal counts (4..20 each), means apart, correlated noise."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=g)
    feats, labels = [], []
    for c in range(9):
        n = 4 + 2 * c
        feats.append(torch.randn(dim, generator=g) * 2 + torch.randn(n, dim, generator=g) @ mix * 0.5)
        labels.append(torch.full((n,), c))
    return torch.cat(feats), torch.cat(labels)


def fit_by_tasks(head, feats: torch.Tensor, labels: torch.Tensor, tasks=TASKS):
    for low, high in tasks:
        rows = (labels >= low) & (labels < high)
        head.fit(feats[rows], labels[rows], low, high)
    return head


def test_incremental_statistics_equal_the_batch_closed_form():
    feats, labels = class_data()
    stats = fit_by_tasks(PooledGaussians(feats.shape[1]), feats, labels)
    x, y = feats.double().numpy(), labels.numpy()
    means = np.stack([x[y == c].mean(0) for c in range(9)])
    centred = x - means[y]
    np.testing.assert_allclose(stats.means.numpy(), means, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.covariance().numpy(), centred.T @ centred / len(y), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(stats.counts.numpy(), np.bincount(y))
    with pytest.raises(ValueError, match=r"classes \[3, 4\] already have statistics"):
        stats.fit(feats[labels == 3], labels[labels == 3], 3, 5)


@pytest.mark.parametrize("shrinkage", [1e-3, 0.3, 1.0])
def test_head_equals_scikit_learn_lda_on_normalised_features(shrinkage):
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    feats, labels = class_data(1)
    head = fit_by_tasks(LDAHead(feats.shape[1], shrinkage, priors="empirical"), feats, labels)
    g = F.normalize(feats, dim=-1).double().numpy()
    ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage).fit(g, labels.numpy())
    weight, bias = lda_weights(head.stats.means, head.stats.covariance(), shrinkage, head.stats.counts.log() -
                               head.stats.counts.sum().log())
    np.testing.assert_allclose(weight.numpy(), ref.coef_, rtol=1e-8, atol=1e-8 * np.abs(ref.coef_).max())
    np.testing.assert_allclose(bias.numpy(), ref.intercept_, rtol=1e-8, atol=1e-8 * np.abs(ref.intercept_).max())
    # the head stores them centred over the classes: the same softmax (and argmax) as scikit-learn's
    torch.testing.assert_close(head.weight, (weight - weight.mean(0)).float())
    probe = torch.randn(50, feats.shape[1], generator=torch.Generator().manual_seed(5))
    unit = F.normalize(probe, dim=-1).double().numpy()
    np.testing.assert_allclose(head.logits(probe).softmax(-1).numpy(), ref.predict_proba(unit), atol=1e-4)
    assert head.logits(probe).argmax(1).tolist() == ref.predict(unit).tolist()
    # uniform priors: the same weights, the bias without log(n_c / N)
    uniform = fit_by_tasks(LDAHead(feats.shape[1], shrinkage), feats, labels)
    torch.testing.assert_close(uniform.weight, head.weight)
    log_priors = (torch.bincount(labels) / labels.numel()).log()
    torch.testing.assert_close(uniform.bias, head.bias - (log_priors - log_priors.mean()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("per_class", [3, 8, 60])
def test_oas_shrinkage_equals_scikit_learns_on_the_class_centred_features(per_class):
    from sklearn.covariance import oas

    g = torch.Generator().manual_seed(per_class)
    labels = torch.arange(5).repeat_interleave(per_class)
    feats = torch.randn(5, 12, generator=g)[labels] + torch.randn(labels.numel(), 12, generator=g) @ \
        torch.randn(12, 12, generator=g) * 0.3
    head = fit_by_tasks(LDAHead(12, "oas"), feats, labels, [(0, 2), (2, 5)])
    x, y = F.normalize(feats, dim=-1).double().numpy(), labels.numpy()
    centred = x - np.stack([x[y == c].mean(0) for c in range(5)])[y]
    expected = oas(centred, assume_centered=True)[1]
    assert head.current_shrinkage() == pytest.approx(expected, rel=1e-9)
    assert oas_shrinkage(torch.eye(4), 10) == 1.0  # S already a multiple of I: nothing to estimate
    # the head is the fixed-shrinkage head at that value, and fewer samples per class shrink more
    fixed = fit_by_tasks(LDAHead(12, float(expected)), feats, labels, [(0, 2), (2, 5)])
    torch.testing.assert_close(head.weight, fixed.weight)
    torch.testing.assert_close(head.bias, fixed.bias)
    assert (expected > 0.2) == (per_class <= 8)


def test_the_shrinkage_script_agrees_with_the_incremental_head():
    """benchmarks/lda_shrinkage.py (all data at once) and LDAHead('oas') fitted task by task: the same accuracy."""
    feats, labels = class_data(4)
    unit = F.normalize(feats, dim=-1)
    row = load_benchmark_script("lda_shrinkage").row(unit, labels, unit, labels, None, 9)
    head = fit_by_tasks(LDAHead(feats.shape[1], "oas"), feats, labels)
    assert row["a_oas"] == pytest.approx(head.current_shrinkage(), rel=1e-9) and row["n"] == labels.numel()
    assert row["oas"] == pytest.approx(100 * float((head.logits(feats).argmax(1) == labels).double().mean()))
    capped = load_benchmark_script("lda_shrinkage").row(unit, labels, unit, labels, 4, 9)
    assert capped["n"] == 36 and capped["a_oas"] > row["a_oas"]  # fewer samples: more shrinkage


def test_lda_weights_solve_the_shrunk_system():
    means, cov = torch.randn(4, 3, dtype=torch.float64), torch.eye(3, dtype=torch.float64) * 0.5
    cov[0, 1] = cov[1, 0] = 0.2
    weight, bias = lda_weights(means, cov, 0.1)
    sigma = 0.9 * cov + 0.1 * cov.trace() / 3 * torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(weight @ sigma, means)
    torch.testing.assert_close(bias, -0.5 * torch.einsum("cd,de,ce->c", means, torch.linalg.inv(sigma), means))


def test_the_head_does_not_depend_on_the_class_order():
    feats, labels = class_data(2)
    first = fit_by_tasks(LDAHead(feats.shape[1], 1e-2), feats, labels)
    order = torch.tensor([6, 2, 8, 0, 4, 1, 7, 3, 5])  # new label of class c: position of c in `order`
    relabel = torch.empty_like(order)
    relabel[order] = torch.arange(9)
    second = fit_by_tasks(LDAHead(feats.shape[1], 1e-2), feats, relabel[labels], [(0, 4), (4, 6), (6, 9)])
    torch.testing.assert_close(second.weight, first.weight[order], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(second.bias, first.bias[order], atol=1e-6, rtol=1e-6)


def test_sdc_moves_the_means_by_the_drift_of_the_normalised_features_and_keeps_the_covariance():
    feats, labels = class_data(3)
    head = fit_by_tasks(LDAHead(feats.shape[1], 1e-2), feats, labels, TASKS[:2])
    scatter, means = head.stats.scatter.clone(), head.stats.means.clone()
    g = torch.Generator().manual_seed(7)
    before = torch.randn(30, feats.shape[1], generator=g)
    assert head.compensate_drift(before, before * 3.0, upto=3, sigma=0.3) == pytest.approx(0, abs=1e-6)  # norms only
    after = before + 0.3 * torch.randn(30, feats.shape[1], generator=g)
    moved = head.compensate_drift(before, after, upto=3, sigma=0.3)
    # brute force: w_ic = exp(-||g(b_i) - g(mu_c)||^2 / (2 sigma^2)), shift_c = sum_i w_ic (g(a_i) - g(b_i)) / sum w_ic
    b, a = (F.normalize(t, dim=-1).double().numpy() for t in (before, after))
    mu = means[:3].numpy()
    mu_unit = mu / np.linalg.norm(mu, axis=1, keepdims=True)
    w = np.exp(-((mu_unit[:, None, :] - b[None]) ** 2).sum(-1) / (2 * 0.3**2))
    shift = (w @ (a - b)) / w.sum(1, keepdims=True)
    np.testing.assert_allclose(head.stats.means[:3].numpy(), mu + shift, atol=1e-6)
    assert moved == pytest.approx(np.linalg.norm(shift, axis=1).mean(), rel=1e-5)
    assert torch.equal(head.stats.means[3:], means[3:]) and torch.equal(head.stats.scatter, scatter)
    expected_w, expected_b = lda_weights(head.stats.means, head.stats.covariance(), 1e-2)
    torch.testing.assert_close(head.weight, (expected_w - expected_w.mean(0)).float())  # follows the moved means
    torch.testing.assert_close(head.bias, (expected_b - expected_b.mean(0)).float())


def test_checkpoint_state_round_trips_the_head():
    feats, labels = class_data(4)
    head = fit_by_tasks(LDAHead(feats.shape[1], 1e-2, "empirical"), feats, labels)
    structure, tensors = head.checkpoint_state()
    again = LDAHead(feats.shape[1], 1e-2, "empirical")
    again.load_checkpoint_state(json.loads(json.dumps(structure)), {k: v.clone() for k, v in tensors.items()})
    assert torch.equal(again.logits(feats), head.logits(feats))
    assert again.stored_numel() == 9 * (feats.shape[1] + 1)


# -- in the harness ------------------------------------------------------------------------------------


def ncm_lda(class_order="sorted", **classifier):
    return tiny(method={"name": "ncm", "classifier": {"kind": "lda", **classifier}},
                benchmark={"class_order": class_order}, name="ncm-lda")


def test_frozen_backbone_gives_the_same_head_for_two_class_orders(tmp_path):
    order = [4, 5, 2, 3, 0, 1]
    heads, results = [], []
    for name, spec in (("sorted", "sorted"), ("other", order)):
        run_config(load_config(data=ncm_lda(spec)), tmp_path / name, quiet=True, stream=io.StringIO())
        head = restore_run(tmp_path / name / "seed-3").method.class_head
        position = {c: i for i, c in enumerate(range(6) if spec == "sorted" else spec)}
        rows = torch.tensor([position[c] for c in range(6)])  # row of original class c
        heads.append((head.weight[rows], head.bias[rows]))
        results.append(json.loads((tmp_path / name / "seed-3" / "results.json").read_text()))
    torch.testing.assert_close(heads[0], heads[1], atol=1e-5, rtol=1e-5)
    assert results[0]["metrics"]["final_accuracy"] == results[1]["metrics"]["final_accuracy"]
    dim = heads[0][0].shape[1]
    assert results[0]["inference_cost"]["extra_parameters"] == 6 * (dim + 1)  # W and b, nothing else
    # kept to learn more classes: the class sums and counts and the pooled scatter (NCM has no linear head)
    assert results[0]["inference_cost"]["extra_stored_numbers"] == 6 * (dim + 1) + 6 * dim + 6 + dim * dim


def test_the_oracle_script_on_a_frozen_encoder_equals_the_incremental_head(tmp_path):
    """benchmarks/oracle_statistics.py: with a frozen encoder the final features are the frozen ones, and the LDA
    head fitted task by task is exact, so as run, oracle LDA and frozen LDA agree (and both NCMs)."""
    data = ncm_lda([4, 5, 2, 3, 0, 1])  # classes close together: neither head is perfect, and they differ
    data["benchmark"]["options"] |= {"separation": 0.4, "train_per_class": 10, "test_per_class": 8}
    run_config(load_config(data=data), tmp_path / "run", quiet=True, stream=io.StringIO())
    (row,) = load_benchmark_script("oracle_statistics").main([str(tmp_path / "run")]).values()
    assert row["as run"] == pytest.approx(row["oracle lda"]) and row["oracle lda"] == pytest.approx(row["frozen lda"])
    assert row["oracle ncm"] == pytest.approx(row["frozen ncm"]) and row["frozen ncm"] != pytest.approx(row["as run"])
    assert 30 < row["as run"] < 90


def test_sdlora_with_the_lda_head_resumes_to_the_same_results(tmp_path):
    data = tiny(method={"name": "sdlora", "options": {"rank": 2},
                        "classifier": {"kind": "lda", "drift": "sdc", "head_init": "class_mean"}},
                train={"epochs": 2})
    result = check_resume_equals_uninterrupted(tmp_path, data, stop_at=(1, 1, False))
    assert result["task_info"][1]["prototype_shift"] > 0  # SDC moved the LDA means
    assert result["config"]["method"]["classifier"]["shrinkage"] == "oas"
    assert all(0 < info["lda_shrinkage"] <= 1 for info in result["task_info"])  # what OAS chose after each task


def test_export_and_load_reproduce_the_lda_logits(tmp_path):
    seed = check_exported_head(tmp_path, {"kind": "lda", "drift": "sdc"}, "normalized_linear",
                               lambda f: F.normalize(f, dim=-1))
    assert main(["export", str(seed), "--out", str(tmp_path / "t"), "--format", "timm"]) == 1


@pytest.mark.parametrize(("method", "classifier", "message"), [
    ("sdlora", {"kind": "prototypes", "shrinkage": 1e-2}, "method.classifier.shrinkage: 0.01 is refused: shrinkage "
                                                          "tunes the LDA and ridge heads"),
    ("sdlora", {"priors": "empirical"}, "method.classifier.priors: 'empirical' is refused: priors tunes the LDA head"),
    ("sdlora", {"kind": "lda", "shrinkage": 0}, "shrinkage must be in \\(0, 1\\] or .oas."),
    ("sdlora", {"kind": "lda", "shrinkage": 1.5}, "shrinkage must be in \\(0, 1\\] or .oas."),
    ("ncm", {"kind": "lda", "drift": "sdc"}, "method.classifier.drift: 'sdc' is refused: ncm's backbone is frozen"),
    ("ncm", {"kind": "linear"}, "method.classifier.kind: 'linear' is refused: ncm has no trained head: it predicts "
                                "from class statistics"),
])
def test_settings_that_make_no_sense_are_refused(method, classifier, message):
    check_classifier_refused(method, classifier, message)


def test_lda_defaults_are_filled_only_for_the_lda_kind():
    cfg = build.validate_plugins(load_config(data=ncm_lda())).method.classifier
    assert cfg == ClassifierConfig("lda", "none", shrinkage="oas", priors="uniform", **HEAD_TRAINING)
    sdlora_cfg = build.validate_plugins(load_config(data=tiny(method={"name": "sdlora"}))).method.classifier
    assert sdlora_cfg.shrinkage is None and sdlora_cfg.priors is None

"""The ridge head (`method.classifier.kind: ridge`) and random feature maps before the heads from running sums
(`random_features: M`): against scikit-learn's closed forms on the mapped features, batch against incremental,
order independence, drift compensation in the space of the statistics, checkpoint / resume, export refusal and
the config's refusals and defaults."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sdlora
from engine_helpers import check_classifier_refused, check_resume_equals_uninterrupted, tiny
from export_helpers import train, vit_run_config
from sdlora.cli import main
from sdlora.config import load_config
from sdlora.engine import build
from sdlora.engine.restore import restore_run
from sdlora.method_config import HEAD_TRAINING, ClassifierConfig
from sdlora.methods.lda import LDAHead, RidgeHead, ridge_weights
from sdlora.methods.random_features import RandomFeatures
from test_lda_head import class_data, fit_by_tasks

DIM, WIDTH = 6, 40


def ridge_alpha(h: np.ndarray, shrinkage: float) -> float:
    """RanPAC's lambda of the ridge head with `shrinkage` a: a / (1 - a) times the mean eigenvalue of G = H^T H."""
    return shrinkage / (1 - shrinkage) * float((h**2).sum()) / h.shape[1]


def without_class_mean(x: np.ndarray, axis: int) -> np.ndarray:
    return x - x.mean(axis, keepdims=True)


@pytest.mark.parametrize("shrinkage", [1e-3, 0.3])
@pytest.mark.parametrize("kind", [None, "relu", "rff"])
def test_ridge_head_equals_scikit_learn_ridge_on_one_hot_targets(shrinkage, kind):
    from sklearn.linear_model import Ridge, RidgeClassifier

    feats, labels = class_data(1)
    fmap = None if kind is None else RandomFeatures(DIM, WIDTH, kind, 1.4, seed=11)
    head = fit_by_tasks(RidgeHead(DIM, shrinkage, fmap), feats, labels)
    h = head.lift(feats).double().numpy()  # the head's own h (phi(g), float32) in float64
    y = labels.numpy()
    alpha = ridge_alpha(h, shrinkage)
    ref = Ridge(alpha=alpha, fit_intercept=False).fit(h, np.eye(9)[y]).coef_  # W_o^T [C, M]
    # w_c = W_o[:, c] / (1 - a), stored centred over the classes; no bias
    expected = without_class_mean(ref, 0) / (1 - shrinkage)
    np.testing.assert_allclose(head.weight.double().numpy(), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert torch.equal(head.bias, torch.zeros(9))
    probe = torch.randn(50, DIM, generator=torch.Generator().manual_seed(5))
    hp = head.lift(probe).double().numpy()
    logits = hp @ ref.T / (1 - shrinkage)
    np.testing.assert_allclose(head.logits(probe).double().numpy(), without_class_mean(logits, 1),
                               atol=1e-4 * np.abs(logits).max())
    classifier = RidgeClassifier(alpha=alpha, fit_intercept=False).fit(h, y)  # +-1 targets: the same argmax
    assert head.logits(probe).argmax(1).tolist() == classifier.predict(hp).tolist()


@pytest.mark.parametrize("kind", ["relu", "rff"])
def test_lda_over_random_features_equals_scikit_learn_lda_on_the_mapped_features(kind):
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    feats, labels = class_data(2)
    head = fit_by_tasks(LDAHead(DIM, 0.1, "empirical", RandomFeatures(DIM, WIDTH, kind, 1.4, seed=4)), feats, labels)
    h = head.lift(feats).double().numpy()
    ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=0.1).fit(h, labels.numpy())
    expected = without_class_mean(ref.coef_, 0)
    np.testing.assert_allclose(head.weight.double().numpy(), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    probe = torch.randn(50, DIM, generator=torch.Generator().manual_seed(6))
    hp = head.lift(probe).double().numpy()
    np.testing.assert_allclose(head.logits(probe).softmax(-1).numpy(), ref.predict_proba(hp), atol=1e-4)
    assert head.logits(probe).argmax(1).tolist() == ref.predict(hp).tolist()


def test_random_feature_maps_follow_their_formulas():
    g = F.normalize(torch.randn(5, DIM, generator=torch.Generator().manual_seed(0)), dim=-1)
    relu = RandomFeatures(DIM, WIDTH, "relu", seed=3)
    assert torch.equal(relu(g), torch.relu(g @ relu.weight)) and torch.equal(relu.offset, torch.zeros(WIDTH))
    assert torch.equal(RandomFeatures(DIM, WIDTH, "relu", seed=3).weight, relu.weight)  # the seed fixes the map
    assert not torch.equal(RandomFeatures(DIM, WIDTH, "relu", seed=4).weight, relu.weight)
    # rff: sqrt(2/M) cos(W^T g / s + b), whose inner products approximate the RBF kernel of bandwidth s
    width, s = 20_000, 0.8
    rff = RandomFeatures(DIM, width, "rff", s, seed=3)
    h = rff(g.double())
    assert h.dtype == torch.float64 and ((0 <= rff.offset) & (rff.offset < 2 * math.pi)).all()
    unscaled = RandomFeatures(DIM, width, "rff", 1.0, seed=3)
    torch.testing.assert_close(rff.weight, unscaled.weight / s)
    torch.testing.assert_close(h, math.sqrt(2 / width) * torch.cos(g.double() @ rff.weight.double() + rff.offset))
    kernel = torch.exp(-torch.cdist(g.double(), g.double()) ** 2 / (2 * s**2))
    assert (h @ h.T - kernel).abs().max() < 0.03  # Monte Carlo error ~ 1 / sqrt(M) = 0.007
    assert (relu.stored_numel(), rff.stored_numel()) == (DIM * WIDTH, DIM * width + width)
    # relu is positively homogeneous: a bandwidth only rescales h, and the heads give the same logits for any scale
    halved = RandomFeatures(DIM, WIDTH, "relu", 2.0, seed=3)
    torch.testing.assert_close(halved(g), relu(g) / 2)
    feats, labels = class_data(0)
    for head_class in (LDAHead, RidgeHead):
        one, two = (fit_by_tasks(head_class(DIM, 1e-2, feature_map=m), feats, labels) for m in (relu, halved))
        torch.testing.assert_close(two.logits(feats), one.logits(feats), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="feature_map must be one of"):
        RandomFeatures(DIM, WIDTH, "tanh")  # type: ignore[arg-type]


@pytest.mark.parametrize("head_class", [LDAHead, RidgeHead])
def test_incremental_fit_equals_one_batch_and_does_not_depend_on_the_class_order(head_class):
    feats, labels = class_data(3)

    def head():
        return head_class(DIM, 1e-2, feature_map=RandomFeatures(DIM, WIDTH, "rff", 1.4, seed=9))

    incremental = fit_by_tasks(head(), feats, labels)
    batch = fit_by_tasks(head(), feats, labels, [(0, 9)])
    torch.testing.assert_close(incremental.weight, batch.weight, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(incremental.bias, batch.bias, atol=1e-5, rtol=1e-5)
    order = torch.tensor([6, 2, 8, 0, 4, 1, 7, 3, 5])  # new label of class c: position of c in `order`
    relabel = torch.empty_like(order)
    relabel[order] = torch.arange(9)
    other = fit_by_tasks(head(), feats, relabel[labels], [(0, 4), (4, 6), (6, 9)])
    torch.testing.assert_close(other.weight, incremental.weight[order], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(other.bias, incremental.bias[order], atol=1e-5, rtol=1e-5)


def test_sdc_moves_the_means_of_h_with_weights_from_the_class_means_of_g():
    feats, labels = class_data(4)
    fmap = RandomFeatures(DIM, WIDTH, "relu", seed=2)
    head = fit_by_tasks(RidgeHead(DIM, 1e-2, fmap), feats, labels, [(0, 3), (3, 5)])
    scatter, means = head.stats.scatter.clone(), head.stats.means.clone()
    g = F.normalize(feats, dim=-1).double()
    anchors = torch.stack([g[labels == c].mean(0) for c in range(5)])  # class means of g
    torch.testing.assert_close(head.anchors.means, anchors.float())
    gen = torch.Generator().manual_seed(7)
    before = torch.randn(30, DIM, generator=gen)
    after = before + 0.3 * torch.randn(30, DIM, generator=gen)
    moved = head.compensate_drift(before, after, upto=3, sigma=0.3)
    # brute force: w_ic = exp(-||g(b_i) - g(anchor_c)||^2 / (2 sigma^2)); means of h move by the weighted drift of h
    b, a = (F.normalize(t, dim=-1).double() for t in (before, after))
    unit = F.normalize(anchors[:3], dim=-1)
    w = torch.exp(-((unit[:, None] - b[None]) ** 2).sum(-1) / (2 * 0.3**2))
    w = w / w.sum(1, keepdim=True)
    phi = fmap.double()
    torch.testing.assert_close(head.stats.means[:3], means[:3] + w @ (phi(a) - phi(b)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head.anchors.means[:3], (anchors[:3] + w @ (a - b)).float(), atol=1e-6, rtol=1e-5)
    assert moved == pytest.approx(float((w @ (a - b)).norm(dim=-1).mean()), rel=1e-5)
    assert torch.equal(head.stats.means[3:], means[3:]) and torch.equal(head.stats.scatter, scatter)
    counts = head.stats.counts
    expected = ridge_weights(head.stats.means, head.stats.covariance(), counts / counts.sum(), 1e-2)
    torch.testing.assert_close(head.weight, (expected - expected.mean(0)).float())  # follows the moved means


def test_checkpoint_holds_the_feature_map_not_only_its_seed():
    feats, labels = class_data(5)
    head = fit_by_tasks(LDAHead(DIM, 1e-2, feature_map=RandomFeatures(DIM, WIDTH, "rff", 1.4, seed=1)), feats, labels)
    structure, tensors = head.checkpoint_state()
    again = LDAHead(DIM, 1e-2, feature_map=RandomFeatures(DIM, WIDTH, "rff", 1.4, seed=2))  # another draw
    again.load_checkpoint_state(json.loads(json.dumps(structure)), {k: v.clone() for k, v in tensors.items()})
    assert torch.equal(again.feature_map.weight, head.feature_map.weight)
    assert torch.equal(again.anchors.means, head.anchors.means)
    assert torch.equal(again.logits(feats), head.logits(feats))
    assert again.stored_numel() == 9 * (WIDTH + 1) + DIM * WIDTH + WIDTH  # W, b, and the map's W and b
    assert head.export_kind == "random_features" and LDAHead(DIM, 1e-2).export_kind == "normalized_linear"


# -- in the harness ------------------------------------------------------------------------------------


RIDGE_RF = {"kind": "ridge", "random_features": 48, "feature_map": "rff", "bandwidth": 1.2}


def test_sdlora_with_ridge_over_random_features_resumes_to_the_same_results(tmp_path):
    data = tiny(method={"name": "sdlora", "options": {"rank": 2},
                        "classifier": {**RIDGE_RF, "drift": "sdc", "head_init": "class_mean"}},
                train={"epochs": 2})
    result = check_resume_equals_uninterrupted(tmp_path, data, stop_at=(1, 1, False))
    assert result["task_info"][1]["prototype_shift"] > 0  # SDC moved the class means
    classifier = result["config"]["method"]["classifier"]
    assert (classifier["shrinkage"], classifier["priors"], classifier["bandwidth"]) == (1e-2, None, 1.2)
    head = restore_run(tmp_path / "ref" / "seed-3").method.class_head
    dim = head.anchors.means.shape[1]
    # drawn from the run's seed, and kept in the checkpoint
    assert torch.equal(head.feature_map.weight, RandomFeatures(dim, 48, "rff", 1.2, seed=3).weight)
    assert result["inference_cost"]["extra_parameters"] == 6 * (48 + 1) + dim * 48 + 48


def test_the_feature_map_changes_prediction_only_not_what_sdlora_trains(tmp_path):
    states = []
    for name, classifier in (("lda", {"kind": "lda"}), ("rf", RIDGE_RF)):
        data = tiny(method={"name": "sdlora", "options": {"rank": 2},
                            "classifier": {**classifier, "drift": "sdc", "head_init": "class_mean"}})
        states.append(restore_run(train(data, tmp_path / name)).method.backbone.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])  # its own generator: same training


def test_exports_refuse_a_head_over_random_features_and_the_run_folder_predicts(tmp_path, capsys):
    data = vit_run_config()
    data["method"]["classifier"] = {"kind": "lda", "random_features": 64, "drift": "sdc"}
    seed = train(data, tmp_path / "run")
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        own = restore_run(seed).method.eval()(x)
    torch.testing.assert_close(sdlora.load(seed).logits(list(x)), own, atol=1e-5, rtol=1e-5)
    for args in (["--out", str(tmp_path / "m.safetensors")], ["--out", str(tmp_path / "t"), "--format", "timm"]):
        assert main(["export", str(seed), *args]) == 1
        assert "random feature map (classifier.random_features)" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "t").exists()


@pytest.mark.parametrize(("classifier", "message"), [
    ({"kind": "prototypes", "random_features": 64}, "method.classifier.random_features: 64 is refused: "
                                                    "random_features tunes the LDA and ridge heads"),
    ({"kind": "ridge", "priors": "empirical"}, "method.classifier.priors: 'empirical' is refused: priors tunes the "
                                               "LDA head \\(kind 'lda'\\); this classifier is kind 'ridge'"),
    ({"kind": "lda", "feature_map": "rff"}, "method.classifier.feature_map: 'rff' is refused: feature_map shapes "
                                            "the random feature map, which needs random_features: M"),
    ({"kind": "lda", "random_features": 64, "bandwidth": 2.0}, "method.classifier.bandwidth: 2.0 is refused: "
                                                               "bandwidth is the RBF kernel's of feature_map 'rff'"),
    ({"kind": "lda", "random_features": 0}, "random_features must be > 0"),
    ({"kind": "ridge", "shrinkage": "oas"}, "method.classifier.shrinkage: 'oas' is refused: OAS estimates the "
                                            "shrinkage of a covariance \\(kind 'lda'\\)"),
    ({"kind": "ridge", "random_features": 64, "feature_map": "rff", "bandwidth": 0}, "bandwidth must be > 0"),
])
def test_random_feature_settings_that_make_no_sense_are_refused(classifier, message):
    check_classifier_refused("sdlora", classifier, message)


@pytest.mark.parametrize(("classifier", "expected"), [
    ({"kind": "ridge"}, ClassifierConfig("ridge", "none", shrinkage=1e-2, **HEAD_TRAINING)),
    ({"kind": "lda", "random_features": 64}, ClassifierConfig("lda", "none", shrinkage="oas", priors="uniform",
                                                              random_features=64, feature_map="relu", **HEAD_TRAINING)),
    ({"kind": "ridge", "random_features": 64, "feature_map": "rff"},
     ClassifierConfig("ridge", "none", shrinkage=1e-2, random_features=64, feature_map="rff", bandwidth=1.4,
                      **HEAD_TRAINING)),
])
def test_defaults_are_filled_for_the_heads_from_running_sums(classifier, expected):
    data = tiny(method={"name": "ncm", "classifier": classifier}, name="ncm")
    assert build.validate_plugins(load_config(data=data)).method.classifier == expected

"""Classifier alignment as a classifier kind (`method.classifier.kind: aligned`): the aligned head against the
closed-form Bayes rule, drift compensation of its statistics, checkpoint / resume, export and the config's
refusals."""

import io
import json

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from engine_helpers import check_classifier_refused, check_resume_equals_uninterrupted, tiny_sdlora
from export_helpers import check_exported_head
from sdlora.cli import main
from sdlora.config import load_config
from sdlora.engine.runner import run_config
from sdlora.method_config import ALIGNMENT, ClassifierConfig
from sdlora.methods.aligned import AlignedHead
from sdlora.methods.head import IncrementalHead

DIM, TASKS = 4, [(0, 2), (2, 4), (4, 6)]


def gaussians(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """6 class means and one shared covariance (classes overlap: the Bayes rule errs on about 10 %)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, DIM, generator=g) * 1.3, torch.randn(DIM, DIM, generator=g) * 0.25 + torch.eye(DIM)


def draw(means: torch.Tensor, mix: torch.Tensor, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(means.shape[0]).repeat_interleave(per_class)
    return means[labels] + torch.randn(labels.shape[0], DIM, generator=g) @ mix.T, labels


def aligned_head(**settings) -> tuple[AlignedHead, IncrementalHead]:
    head = IncrementalHead(DIM)
    cfg = ClassifierConfig(kind="aligned", **(ALIGNMENT | settings))
    return AlignedHead(DIM, cfg, head), head


def grow_biased(head: IncrementalHead, low: int, high: int) -> None:
    """New rows for classes [low, high) with the biased start of a current-task-only head (large random rows)."""
    head.grow(high - low)
    with torch.no_grad():
        head.weights[-1].copy_(3 * torch.randn(high - low, DIM, generator=torch.Generator().manual_seed(low)))


def learn_tasks(aligned: AlignedHead, head: IncrementalHead, feats, labels, tasks=TASKS) -> list[dict]:
    """As a run does: grow the head (`grow_biased`), fit (and align)."""
    infos = []
    for low, high in tasks:
        grow_biased(head, low, high)
        rows = (labels >= low) & (labels < high)
        infos.append(aligned.fit(feats[rows], labels[rows], low, high))
    return infos


def test_alignment_learns_the_bayes_rule_from_statistics_alone():
    """Enough alignment steps for this small problem (the defaults, SLCA's, take `seen` steps per epoch: 20 here):
    from the stored statistics alone the head matches logistic regression fitted on the samples themselves and
    agrees with the closed-form Bayes rule."""
    torch.manual_seed(5)
    means, mix = gaussians()
    feats, labels = draw(means, mix, 200, seed=1)
    aligned, head = aligned_head(alignment_epochs=50, alignment_lr=0.1)
    infos = learn_tasks(aligned, head, feats, labels)
    assert infos[0] == {} and all(0 < info["alignment_loss"] < 0.6 for info in infos[1:])
    test, truth = draw(means, mix, 2000, seed=2)
    # the closed-form Bayes rule of equal priors and one covariance Sigma = mix mix^T
    precision = torch.linalg.inv(mix @ mix.T)
    bayes = (test @ precision @ means.T - 0.5 * ((means @ precision) * means).sum(-1)).argmax(-1)
    reference = LogisticRegression(C=100, max_iter=5000).fit(feats.numpy(), labels.numpy())
    with torch.no_grad():
        predicted = aligned.logits(test).argmax(-1)
    bayes_acc, acc = (bayes == truth).float().mean(), (predicted == truth).float().mean()
    reference_acc = (reference.predict(test.numpy()) == truth.numpy()).mean()
    assert 0.75 < bayes_acc < 0.9  # the classes overlap
    assert acc > reference_acc - 0.01 and (predicted == bayes).float().mean() > 0.95
    # the statistics are each class's sample mean and covariance (+ 1e-4 I)
    c = labels == 4
    torch.testing.assert_close(aligned.stats.means[4], feats[c].mean(0))
    torch.testing.assert_close(aligned.stats.spread[4], torch.cov(feats[c].T) + 1e-4 * torch.eye(DIM))


def test_without_alignment_the_biased_head_is_far_from_bayes():
    """The head as `grow_biased` starts each task's rows, never aligned: what the previous test improves on."""
    means, mix = gaussians()
    feats, labels = draw(means, mix, 200, seed=1)
    head = IncrementalHead(DIM)
    for low, high in TASKS:
        grow_biased(head, low, high)
    test, truth = draw(means, mix, 2000, seed=2)
    with torch.no_grad():
        assert (head(test).argmax(-1) == truth).float().mean() < 0.5


@pytest.mark.parametrize("statistics", ["covariance", "variance", "multi_centroid"])
def test_sdc_moves_every_stored_mean_by_a_uniform_translation(statistics):
    """SDC's weights sum to 1 over the samples, so a drift that moves every sample by v moves every mean by v;
    the spread is kept, and absent clusters stay zero."""
    torch.manual_seed(0)
    means, mix = gaussians()
    feats, labels = draw(means, mix, 30, seed=1)
    aligned, head = aligned_head(statistics=statistics)
    learn_tasks(aligned, head, feats, labels, TASKS[:2])
    stats = aligned.stats
    kept = {k: v.clone() for k, v in stats.state_dict().items()}
    v = torch.tensor([0.5, -1.0, 0.25, 2.0])
    before = feats[labels >= 4]
    shift = aligned.compensate_drift(before, before + v, upto=4, sigma=0.3)
    assert shift == pytest.approx(float(v.norm()), rel=1e-5)
    if statistics == "multi_centroid":
        present = kept["present"][:, :, None].float()
        torch.testing.assert_close(stats.means, kept["means"] + v * present)
        torch.testing.assert_close(stats.variances, kept["variances"])
    else:
        torch.testing.assert_close(stats.means, kept["means"] + v)
        torch.testing.assert_close(stats.spread, kept["spread"])


def test_checkpoint_state_round_trips_and_the_next_alignment_is_the_same():
    means, mix = gaussians()
    feats, labels = draw(means, mix, 40, seed=1)
    heads = []
    for restored in (False, True):
        torch.manual_seed(11)
        aligned, head = aligned_head()
        learn_tasks(aligned, head, feats, labels, TASKS[:2])
        if restored:
            structure, tensors = aligned.checkpoint_state()
            torch.manual_seed(11)
            aligned, fresh = aligned_head()
            fresh.resize_to(head.block_sizes())
            fresh.load_state_dict(head.state_dict())
            aligned.load_checkpoint_state(structure, tensors)
            head = fresh
        learn_tasks(aligned, head, feats, labels, TASKS[2:])
        heads.append((head.weight().detach(), head.bias().detach()))
    torch.testing.assert_close(heads[0], heads[1], atol=0, rtol=0)


def aligned_sdlora(**classifier) -> dict:
    return tiny_sdlora(**{"kind": "aligned", "drift": "sdc", **classifier})


def test_sdlora_with_the_aligned_head_resumes_to_the_same_results(tmp_path):
    result = check_resume_equals_uninterrupted(tmp_path, aligned_sdlora(), stop_at=(1, 1, False))
    infos = result["task_info"]
    assert "alignment_loss" not in infos[0] and all(info["alignment_loss"] > 0 for info in infos[1:])
    assert infos[1]["prototype_shift"] > 0  # SDC moved the statistics' means
    resolved = result["config"]["method"]["classifier"]
    assert {k: resolved[k] for k in ("kind", *ALIGNMENT)} == {"kind": "aligned", **ALIGNMENT}


def test_the_aligned_head_counts_only_its_weights_to_predict_and_its_statistics_to_learn(tmp_path):
    """Against the same run with the linear head: inference stores the same W and b; the per-class means and
    covariances are kept to learn more classes (stored numbers)."""
    results = {}
    for kind in ("linear", "aligned"):
        data = aligned_sdlora(kind=kind, drift="none")
        run_config(load_config(data=data), tmp_path / kind, quiet=True, stream=io.StringIO())
        results[kind] = json.loads((tmp_path / kind / "seed-3" / "results.json").read_text())
    cost_linear, cost_aligned = (results[k]["inference_cost"] for k in ("linear", "aligned"))
    assert cost_aligned["extra_parameters"] == cost_linear["extra_parameters"]
    dim, classes = 32, 6
    stats = classes * dim + classes * dim * dim  # means and covariances
    assert cost_aligned["extra_stored_numbers"] == cost_linear["extra_stored_numbers"] + stats


def test_export_and_load_reproduce_the_aligned_logits(tmp_path):
    """The aligned head is a plain linear head on the raw feature: every export format writes it."""
    seed = check_exported_head(tmp_path, {"kind": "aligned", "drift": "sdc"}, "linear", lambda f: f)
    assert main(["export", str(seed), "--out", str(tmp_path / "t"), "--format", "timm"]) == 0


@pytest.mark.parametrize(("method", "classifier", "message"), [
    ("sdlora", {"kind": "lda", "alignment_lr": 0.1}, "method.classifier.alignment_lr: 0.1 is refused: alignment_lr "
                                                     "tunes classifier alignment"),
    ("sdlora", {"statistics": "variance"}, "statistics tunes classifier alignment .* kind 'linear'"),
    ("sdlora", {"kind": "aligned", "alignment_epochs": 0}, "alignment_epochs must be > 0"),
    ("hide_prompt", {"kind": "aligned"}, "hide_prompt aligns its head itself"),
    ("ncm", {"kind": "aligned"}, "ncm has no trained head"),
])
def test_alignment_settings_that_make_no_sense_are_refused(method, classifier, message):
    check_classifier_refused(method, classifier, message)

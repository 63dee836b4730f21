"""HiDe-Prompt: class statistics (Gaussian and multi-centroid), k-means, task-identity inference, alignment from
statistics only, per-task prompts, and runs (tiny ViT / BERT) that resume."""

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from engine_helpers import check_resume_equals_uninterrupted, results_without_timing, tiny
from sdlora.config import load_config
from sdlora.data.scenario import TaskInfo
from sdlora.engine import build
from sdlora.methods.class_stats import ClassGaussians, ClassMultiCentroids, align_classifier
from sdlora.methods.hide_prompt import HiDePrompt, contrastive
from sdlora.methods.kmeans import kmeans, kmeans_plusplus, lloyd
from sdlora.typed import ConfigError

FAST = {"tii_lr": 0.01, "tii_batch_size": 4, "tii_epochs": 5, "ca_epochs": 3, "ca_batch_size": 8,
        "tii_ca_batch_size": 8, "tii_ca_lr": 0.01}
HIDE = {"name": "hide_prompt", "options": {"e_layers": [0, 1], "e_length": 3, "statistics": "covariance", **FAST}}
# the release's default statistics; 6 training samples per class here, so 2 clusters (not 10) per class
MULTI = {"name": "hide_prompt", "options": {**HIDE["options"], "statistics": "multi_centroid", "centroids": 2}}
TASKS = [TaskInfo(index=t, known=2 * t, total=2 * t + 2, num_tasks=3) for t in range(3)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # noqa: ANN201
    """One intra-op thread, as the whole suite runs once the adapter tests are imported: the task-inference test
    below trains a 2-unit TII head on 6 samples per class, and its outcome depends on the floating-point summation
    order (it failed run alone with 2 threads). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def built(method: dict = HIDE, **train):  # noqa: ANN201
    cfg = load_config(data=tiny(method=method, train=train))
    torch.manual_seed(0)
    return build.build_method(cfg, build.build_backbone(cfg))


def separable(per_class: int, classes: range, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of class c = a fixed random pattern of c + small noise: far apart for any network."""
    patterns = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(123))
    noise = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes).repeat_interleave(per_class)
    return patterns[labels] + 0.05 * torch.randn(len(labels), 3, 32, 32, generator=noise), labels


def loader(classes: range, seed: int = 0) -> DataLoader:
    return DataLoader(TensorDataset(*separable(6, classes, seed)), batch_size=8)


def sgd_steps(method, task: TaskInfo, steps: int = 2) -> None:  # noqa: ANN001
    method.train()
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.5)
    for step in range(steps):
        x, y = separable(2, range(task.known, task.total), seed=step)
        out = method.training_step((x, y), task)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()


def run_tasks(method, tasks=TASKS, steps: int = 2) -> None:  # noqa: ANN001
    for task in tasks:
        method.begin_task(task)
        sgd_steps(method, task, steps)
        method.end_task(task, loader(range(task.known, task.total)))


def test_class_gaussians_hold_mean_and_covariance_and_sample_from_them():
    torch.manual_seed(0)
    mix = torch.tensor([[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, -0.3, 0.2]])
    feats = torch.cat([torch.randn(400, 3) @ mix + 5, torch.randn(300, 3) - 1])
    labels = torch.tensor([0] * 400 + [1] * 300)
    stats = ClassGaussians(3, eps=1e-4)
    stats.fit(feats, labels, 0, 2)
    torch.testing.assert_close(stats.means[0], feats[:400].mean(0))
    torch.testing.assert_close(stats.spread[1], torch.cov(feats[400:].T) + 1e-4 * torch.eye(3))
    drawn = stats.sample(torch.zeros(20000, dtype=torch.long), stats.factors(2),
                         torch.Generator().manual_seed(1))
    torch.testing.assert_close(drawn.mean(0), stats.means[0], atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(drawn.T), stats.spread[0], atol=0.08, rtol=0)
    diagonal = ClassGaussians(3, kind="variance", eps=1e-4)
    diagonal.fit(feats, labels, 0, 2)
    torch.testing.assert_close(diagonal.spread, torch.stack([stats.spread[0].diag(), stats.spread[1].diag()]))


def test_alignment_learns_the_classes_from_their_statistics_alone():
    stats = ClassGaussians(4)
    stats.resize_to(3)
    stats.means.copy_(torch.eye(4)[:3] * 3)
    stats.spread.copy_(torch.eye(4).expand(3, 4, 4) * 0.1)
    head = torch.nn.Linear(4, 3)
    loss = align_classifier(head, list(head.parameters()), stats, 3, 2, epochs=20, batch_size=32, lr=0.1,
                            momentum=0.9, weight_decay=0.0, generator=torch.Generator().manual_seed(0))
    assert loss < 0.1
    assert head(stats.means).argmax(1).tolist() == [0, 1, 2]



def blobs(sizes: list[int], dim: int = 5, spread: float = 0.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Points of well-separated Gaussian blobs (centres ~ N(0, 10^2 I)) and the blobs' centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(sizes), dim, generator=g, dtype=torch.float64) * 10
    points = torch.cat([c + spread * torch.randn(n, dim, generator=g, dtype=torch.float64)
                        for c, n in zip(centres, sizes, strict=True)])
    return points, centres


def matched(found: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`reference` reordered to the rows of `found` (each found row's nearest reference row, all distinct)."""
    order = torch.cdist(found, reference).argmin(1)
    assert sorted(order.tolist()) == list(range(reference.shape[0]))
    return reference[order]


def test_kmeans_recovers_the_blob_means_and_agrees_with_sklearn():
    from sklearn.cluster import KMeans

    sizes = [30, 50, 20, 40]
    x, _ = blobs(sizes)
    truth = torch.stack([part.mean(0) for part in x.split(sizes)])  # the blobs' sample means
    labels, centres = kmeans(x, 4, torch.Generator().manual_seed(1))
    torch.testing.assert_close(centres, matched(centres, truth), rtol=0, atol=1e-9)  # each blob its own cluster
    oracle = KMeans(n_clusters=4, n_init=10, random_state=0).fit(x.numpy())
    torch.testing.assert_close(centres, matched(centres, torch.from_numpy(oracle.cluster_centers_)),
                               rtol=0, atol=1e-9)
    relabel = {int(a): int(b) for a, b in zip(labels, oracle.labels_, strict=True)}
    assert len(relabel) == 4 and [relabel[int(a)] for a in labels] == oracle.labels_.tolist()
    again, _ = kmeans(x, 4, torch.Generator().manual_seed(1))
    assert torch.equal(again, labels)  # the generator decides everything


def test_lloyd_iterations_match_sklearn_from_the_same_start():
    """No clusters in the data: many rounds, moving assignments; same start -> same labels, centres, inertia."""
    from sklearn.cluster import KMeans

    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        x = torch.randn(200, 8, generator=g, dtype=torch.float64)
        start = x[kmeans_plusplus(x, 10, g)]
        labels, centres, inertia = lloyd(x, start, float(x.var(0, unbiased=False).mean()) * 1e-4)
        oracle = KMeans(n_clusters=10, init=start.numpy(), n_init=1, algorithm="lloyd").fit(x.numpy())
        assert labels.tolist() == oracle.labels_.tolist()
        torch.testing.assert_close(centres, torch.from_numpy(oracle.cluster_centers_), rtol=0, atol=1e-12)
        assert inertia == pytest.approx(oracle.inertia_, rel=1e-12)


def test_kmeans_with_fewer_points_than_clusters_and_with_duplicates():
    from sklearn.cluster import KMeans

    x = torch.tensor([[0.0, 1.0], [2.0, 0.0], [5.0, 5.0]])
    labels, centres = kmeans(x, 10, torch.Generator().manual_seed(0))
    assert centres.shape == (3, 2) and sorted(labels.tolist()) == [0, 1, 2]  # one cluster per point
    torch.testing.assert_close(centres[labels], x.double())
    dup = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    labels, centres = kmeans(dup, 4, torch.Generator().manual_seed(0))
    assert centres.shape == (4, 2) and labels.unique().numel() == 2  # two distinct points: two clusters used
    torch.testing.assert_close(centres[labels], dup.double())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns about the 2 distinct clusters
        oracle = KMeans(n_clusters=4, n_init=10, random_state=0).fit(dup.numpy())
    assert len({(int(a), int(b)) for a, b in zip(labels, oracle.labels_, strict=True)}) == 2


def multi_centroid_stats() -> tuple[ClassMultiCentroids, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class 0: three blobs; class 1: one blob and 5 equal points far away (a zero-variance cluster)."""
    x0, _ = blobs([40, 60, 30], dim=4, seed=1)
    x1, _ = blobs([50], dim=4, seed=2)
    x1 = torch.cat([x1, torch.full((5, 4), 40.0, dtype=torch.float64)])
    feats = torch.cat([x0, x1]).float()
    labels = torch.tensor([0] * 130 + [1] * 55)
    stats = ClassMultiCentroids(4, centroids=3, eps=1e-4)
    stats.fit(feats, labels, 0, 2, torch.Generator().manual_seed(0))
    return stats, feats, labels, x0


def test_multi_centroid_statistics_are_the_clusters_means_and_variances():
    stats, feats, labels, x0 = multi_centroid_stats()
    assert stats.means.shape == stats.variances.shape == (2, 3, 4) and stats.present.shape == (2, 3)
    parts = x0.split([40, 60, 30])
    torch.testing.assert_close(stats.means[0].double(), matched(stats.means[0].double(),
                                                                torch.stack([p.mean(0) for p in parts])))
    order = torch.cdist(stats.means[0].double(), torch.stack([p.mean(0) for p in parts])).argmin(1)
    want = torch.stack([parts[i].var(0, unbiased=False) for i in order.tolist()])  # np.var: ddof 0
    torch.testing.assert_close(stats.variances[0].double(), want, rtol=1e-5, atol=1e-6)
    # class 1 (55 features, 3 clusters): the 5 equal points form a cluster of variance exactly 0
    assert stats.present.all()
    zero = stats.variances[1].mean(1) == 0
    assert zero.sum() == 1 and torch.equal(stats.means[1][zero][0], torch.full((4,), 40.0))
    assert stats.sampled(2).tolist() == [[True] * 3, (~zero).tolist()]
    assert stats.anchors(2).shape == (6, 4) and stats.anchors(1).shape == (3, 4)  # every cluster mean


def test_multi_centroid_pool_skips_zero_variance_clusters_and_has_the_release_size():
    """The release (E:459-470): num_sampled_pcls pseudo-features per cluster of non-zero variance."""
    stats, *_ = multi_centroid_stats()
    labels, components = stats.pool(2, 7)
    assert torch.bincount(labels).tolist() == [3 * 7, 2 * 7]
    degenerate = int((stats.variances[1].mean(1) == 0).nonzero()) + 3
    assert degenerate not in components.tolist() and (components // 3 == labels).all()
    seen: list[torch.Tensor] = []
    sample = stats.sample

    def recording(components, factors, generator):  # noqa: ANN001, ANN202
        seen.append(components.clone())
        return sample(components, factors, generator)

    stats.sample = recording
    head = torch.nn.Linear(4, 2)
    align_classifier(head, list(head.parameters()), stats, 2, 100, epochs=2, batch_size=7, lr=0.01, momentum=0.0,
                     weight_decay=0.0, generator=torch.Generator().manual_seed(0))
    for drawn in seen:  # more steps than the pool holds: each epoch takes the whole pool, once each
        assert sorted(drawn.tolist()) == sorted(components.tolist())
    assert len(seen) == 2


def test_multi_centroid_pseudo_features_have_their_clusters_mean_and_variance():
    stats, *_ = multi_centroid_stats()
    factors = stats.factors(2)
    for component in (1, 3 + int(stats.sampled(2)[1].nonzero()[0])):
        c, k = divmod(component, 3)
        drawn = stats.sample(torch.full((40000,), component), factors, torch.Generator().manual_seed(component))
        var = stats.variances[c, k] + 1e-4  # the release's diag(var) + 1e-4 I
        torch.testing.assert_close(drawn.mean(0), stats.means[c, k], rtol=0, atol=4 * float(var.max().sqrt()) / 200)
        torch.testing.assert_close(drawn.var(0), var, rtol=0.05, atol=1e-6)


def test_multi_centroid_with_fewer_features_than_centroids_warns_and_samples_nothing():
    stats = ClassMultiCentroids(3, centroids=10)
    feats = torch.cat([torch.randn(4, 3), torch.randn(20, 3) + 5])
    labels = torch.tensor([0] * 4 + [1] * 20)
    with pytest.warns(RuntimeWarning, match="class 0"):
        stats.fit(feats, labels, 0, 2, torch.Generator().manual_seed(0))
    assert stats.present[0].sum() == 4 and stats.present[1].sum() == 10  # one cluster per feature
    assert not stats.sampled(2)[0].any()
    assert torch.bincount(stats.pool(2, 5)[0], minlength=2)[0] == 0
    with pytest.raises(ValueError, match="centroids >= 1"):
        ClassMultiCentroids(3, centroids=0)
    with pytest.raises(ValueError, match="class_statistics"):
        ClassGaussians(3, kind="multi_centroid")


def test_bad_statistics_options_are_refused_with_a_message():
    bad = {"name": "hide_prompt", "options": {**MULTI["options"], "centroids": 0}}
    with pytest.raises(ConfigError, match="centroids: must be >= 1, got 0"):
        build.validate_plugins(load_config(data=tiny(method=bad)))
    with pytest.raises(ValueError, match="centroids"):
        HiDePrompt.Options(centroids=0)
    hyphen = {"name": "hide_prompt", "options": {**MULTI["options"], "statistics": "multi-centroid"}}
    with pytest.raises(ConfigError, match="multi_centroid"):
        build.validate_plugins(load_config(data=tiny(method=hyphen)))
    assert HiDePrompt.Options().statistics == "multi_centroid" and HiDePrompt.Options().centroids == 10


# multi_centroid: 40 alignment epochs (with 20 the tiny TII head still sends class 5, one cluster of non-zero
# variance, to class 0; a linear head aligned on the same statistics for 20 epochs gets every class right)
@pytest.mark.parametrize(("config", "ca_epochs"), [(HIDE, 20), (MULTI, 40)], ids=["covariance", "multi_centroid"])
def test_task_identity_inference_picks_the_right_task_on_separable_data(config, ca_epochs):
    method = built(config | {"options": config["options"] | {"tii_lr": 0.05, "tii_epochs": 30, "ca_epochs": ca_epochs,
                                                              "tii_ca_lr": 0.2, "tii_ca_batch_size": 16}})
    run_tasks(method, steps=1)
    method.eval()
    x, labels = separable(5, range(6), seed=99)  # unseen samples of every class
    with torch.no_grad():
        tasks = method.infer_task(method.query(x))
    # every task is recognised, the first one too after two more (the TII head was aligned on pseudo-features
    # of every seen class drawn from the frozen features' statistics)
    assert tasks.tolist() == (labels // 2).tolist()
    if config is HIDE:
        assert method.tii_stats.means.shape == (6, 32) and method.tii_stats.spread.shape == (6, 32, 32)
    else:
        assert method.tii_stats.means.shape == method.tii_stats.variances.shape == (6, 2, 32)


def test_the_prediction_uses_the_inferred_task_prompt():
    method = built()
    run_tasks(method, steps=1)
    method.eval()
    x, _ = separable(1, range(6), seed=5)
    with torch.no_grad():
        ids = method.infer_task(method.query(x))
        routed = method.features(x)
        own = torch.cat([method.prompted_features(x[i:i + 1], method.prompts.e[int(t)][None])
                         for i, t in enumerate(ids)])
    torch.testing.assert_close(routed, own, rtol=1e-5, atol=1e-6)


def test_a_tasks_prompt_is_untouched_after_its_task_and_momentum_mixes_the_earlier_ones():
    method = built()
    method.begin_task(TASKS[0])
    init = method.prompts.e[0].detach().clone()
    sgd_steps(method, TASKS[0])
    method.end_task(TASKS[0], loader(range(0, 2)))
    e0 = method.prompts.e[0].detach().clone()
    assert not torch.equal(e0, init)
    method.begin_task(TASKS[1])
    assert torch.equal(method.prompts.e[1], e0)  # E^1 starts as a copy of E^0 (shared_prompt_pool)
    sgd_steps(method, TASKS[1])
    trained = method.prompts.e[1].detach().clone()
    method.end_task(TASKS[1], loader(range(2, 4)))
    assert torch.equal(method.prompts.e[0], e0)
    m = method.options.prompt_momentum
    torch.testing.assert_close(method.prompts.e[1], (1 - m) * trained + m * e0)
    ids = {id(p) for g in method.trainable_parameters() for p in g["params"]}
    assert id(method.prompts.e[0]) not in ids and id(method.prompts.e[1]) in ids
    assert not any(p.requires_grad for p in method.tii.parameters())  # trained inside end_task only


def contrast_step(method, t: int, earlier: torch.Tensor):  # noqa: ANN001, ANN201
    """Begin task t, take one training step on its two classes; (the step's output, the task's prompted
    features, the contrastive term by hand: CE of the rows [earlier; features] against themselves at tau 0.8)."""
    method.begin_task(TASKS[t])
    method.train()
    x, y = separable(2, range(2 * t, 2 * t + 2), seed=3)
    out = method.training_step((x, y), TASKS[t])
    with torch.no_grad():
        feats = method.prompted_features(x, method.training_prompt(t)[None])
    rows = torch.cat([earlier, feats])
    return out, feats, torch.nn.functional.cross_entropy(rows @ rows.T / 0.8, torch.arange(rows.shape[0]))


def test_the_loss_is_ce_plus_the_contrastive_term_against_earlier_class_means():
    method = built()
    run_tasks(method, TASKS[:1], steps=1)
    out, feats, manual = contrast_step(method, 1, method.tap_stats.means[:2])
    assert float(out.scalars["contrast"]) == pytest.approx(float(manual), rel=1e-5)
    assert float(contrastive(feats, method.tap_stats.means[:2], 0.8)) == pytest.approx(float(manual), rel=1e-5)
    assert out.loss.item() == pytest.approx(float(out.scalars["ce"] + 0.5 * out.scalars["contrast"]), rel=1e-5)


def test_empty_prefixes_give_the_plain_backbone():
    method = built()
    method.begin_task(TASKS[0])
    method.eval()
    x, _ = separable(1, range(2), seed=1)
    with torch.no_grad():
        empty = torch.zeros(1, 2, 2, 0, 32)
        torch.testing.assert_close(method.prompted_features(x, empty), method.query(x), rtol=0, atol=1e-6)


def test_checkpoint_holds_statistics_not_samples_and_alignment_needs_nothing_else():
    method = built()
    run_tasks(method)
    structure, tensors = method.checkpoint_state()
    stats = {k: v.shape for k, v in tensors.items() if "_stats." in k}
    assert stats == {f"{s}.{b}": shape for s in ("tii_stats", "tap_stats")
                     for b, shape in (("means", (6, 32)), ("spread", (6, 32, 32)))}
    samples = 6 * 6  # the training samples seen; no tensor keeps one row per sample
    assert not any(v.ndim and v.shape[0] in (samples, 12) for v in tensors.values())
    assert set(tensors) - set(stats) <= {k for k in tensors if k.startswith(("head.", "prompts.", "tii."))}
    restored = built()
    restored.load_checkpoint_state(structure, tensors)
    for model in (method, restored):
        model.align(TASKS[2], torch.Generator().manual_seed(7))
    torch.testing.assert_close(restored.head.weight(), method.head.weight(), rtol=0, atol=0)
    torch.testing.assert_close(restored.tii.head.weight(), method.tii.head.weight(), rtol=0, atol=0)
    x, _ = separable(1, range(6), seed=2)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(x), method.eval()(x), rtol=0, atol=0)


def test_multi_centroid_checkpoint_holds_the_clusters_and_the_contrast_uses_every_cluster_mean():
    method = built(MULTI)
    run_tasks(method, TASKS[:2], steps=1)
    structure, tensors = method.checkpoint_state()
    stats = {k: v.shape for k, v in tensors.items() if "_stats." in k}
    assert stats == {f"{s}.{b}": shape for s in ("tii_stats", "tap_stats")
                     for b, shape in (("means", (4, 2, 32)), ("variances", (4, 2, 32)), ("present", (4, 2)))}
    restored = built(MULTI)
    restored.load_checkpoint_state(structure, tensors)
    for model in (method, restored):
        model.align(TASKS[1], torch.Generator().manual_seed(7))
    torch.testing.assert_close(restored.head.weight(), method.head.weight(), rtol=0, atol=0)
    torch.testing.assert_close(restored.tii.head.weight(), method.tii.head.weight(), rtol=0, atol=0)
    stats = method.tap_stats
    assert int(stats.present[:4].sum()) > 4  # more than one row per earlier class
    out, _, manual = contrast_step(method, 2, stats.means[:4][stats.present[:4]])
    assert float(out.scalars["contrast"]) == pytest.approx(float(manual), rel=1e-5)


def test_multi_centroid_run_completes_is_deterministic_and_resumes(tmp_path):
    """Two runs from scratch (one cut in task 1 and resumed: every end-of-task k-means runs in both) give the
    same results."""
    data = tiny(method=MULTI, train={"epochs": 2, "optimizer": "adam", "lr": 0.01})
    ref = check_resume_equals_uninterrupted(tmp_path, data)
    assert len(ref["accuracy_curve"]) == 3 and ref["config"]["method"]["options"]["statistics"] == "multi_centroid"
    assert all(info["head_alignment_loss"] > 0 for info in ref["task_info"][1:])


def test_run_resumes_mid_task_with_the_same_results(tmp_path):
    data = tiny(method=HIDE, train={"epochs": 2, "optimizer": "adam", "lr": 0.01})
    ref = check_resume_equals_uninterrupted(tmp_path, data)
    assert len(ref["accuracy_curve"]) == 3
    assert set(ref["task_info"][1]) >= {"tii_loss", "tii_alignment_loss", "head_alignment_loss"}


def test_cli_trains_a_text_encoder_and_resumes(tmp_path):
    import yaml

    from export_helpers import text_run_config
    from sdlora.cli import main

    data = text_run_config(tmp_path)
    data["method"] = {"name": "hide_prompt", "options": {"e_layers": [0, 1], "e_length": 2, "centroids": 2, **FAST}}
    path = tmp_path / "hide.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out), "--quiet"]) == 0
    final = results_without_timing(out / "seed-3")
    assert len(final["accuracy_curve"]) == 2 and all(0 <= a <= 100 for a in final["accuracy_curve"])
    assert main(["train", str(path), "--out", str(out), "--quiet", "--resume"]) == 0  # finished: nothing to redo
    assert results_without_timing(out / "seed-3") == final


CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"


def test_configs_mirror_the_harness_and_quote_table_2():
    main = load_config(CONFIGS / "clinc150.yaml")
    text = load_config(CONFIGS / "baselines" / "clinc150_hide_prompt.yaml")
    build.validate_plugins(text)
    assert text.backbone == main.backbone and text.benchmark == main.benchmark and text.method.name == "hide_prompt"
    budget = ("optimizer", "lr", "momentum", "epochs", "batch_size")
    assert [getattr(text.train, k) for k in budget] == [getattr(main.train, k) for k in budget]
    assert build.resolve_classifier(text).loss == build.resolve_classifier(main).loss == "current"
    assert text.method.classifier.kind == "linear" and text.seeds == [1993, 1994, 1995]
    vision = load_config(CONFIGS / "vision" / "prompts" / "imagenet_r_10_hide_prompt.yaml")
    build.validate_plugins(vision)
    assert tuple(vision.published[k] for k in ("final_accuracy", "final_accuracy_stderr",
                                               "average_incremental_accuracy",
                                               "average_incremental_accuracy_stderr")) == (74.65, 0.14, 78.46, 0.18)
    assert vision.benchmark.increment == vision.benchmark.init_classes == 20 and "Table 2" in vision.source
    t = vision.train
    assert (t.optimizer, t.epochs, t.batch_size, t.scheduler, t.grad_clip) == ("adam", 150, 192, "cosine", 1.0)
    assert t.lr == pytest.approx(0.03 * 24 / 256)
    assert build.resolve_classifier(vision).head_lr == pytest.approx(t.lr / 10)
    for cfg in (vision, text):  # the release's statistics (configs/imr_hideprompt_5e.py:151-152)
        options = build.validate_plugins(cfg).method.options
        assert (options["statistics"], options["centroids"]) == ("multi_centroid", 10)


def test_two_processes_equal_one(tmp_path):
    """`sdlora train --nproc 2`: the end-of-task statistics (k-means for the default multi_centroid kind), TII
    training and alignment see the gathered features and the same seeds on both ranks, so the run is the
    one-process run (the contrastive term is per micro-batch, as the release's per-GPU term, hence off here)."""
    import subprocess
    import sys

    from test_distributed import BENCH, TRAIN, assert_same_run, environment, one_process, write_config

    method = {"name": "hide_prompt", "options": {**MULTI["options"], "contrast_weight": 0.0}}
    config = write_config(tmp_path / "run.yaml", tiny(benchmark=BENCH, method=method, train=TRAIN))
    one_process(config, tmp_path / "one")
    done = subprocess.run([sys.executable, "-m", "sdlora", "train", str(config), "--out", str(tmp_path / "two"),
                           "--quiet", "--nproc", "2"], env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two")


def test_alignment_batches_default_to_the_releases_effective_ones():
    """The release's 8 processes (same seed) draw the same pools: one process's 24 x 5 = 120 and 24 per step; its
    TII run shards the task's data (DistributedSampler), so that batch is the global 8 x 24."""
    options = HiDePrompt.Options()
    assert (options.ca_batch_size, options.tii_ca_batch_size, options.tii_batch_size) == (120, 24, 192)
    assert options.init_from_previous  # shared_prompt_pool


def test_stored_numbers_count_the_statistics_that_prediction_never_reads():
    """A hand count after 3 tasks (C = 6 classes, D = 32, K = 2 clusters, 2 prompted layers, L = 3):
    prediction reads the prompts, the head and the TII head; the class statistics of both feature kinds are
    kept only to align and to contrast, so they are in `stored_numbers` and not in `inference_parameters`."""
    method = built(MULTI)
    run_tasks(method, steps=1)
    c, d, k, tasks = 6, 32, 2, 3
    prompts = tasks * 2 * 2 * 3 * d  # per task [layers, keys / values, L, D]
    head = c * d + c
    tii = (d * 2 * d + 2 * d) + (2 * d * d + d) + 2 * d + head  # MLP D -> 2D -> D, LayerNorm, its own head
    statistics = 2 * (c * k * d + c * k * d + c * k)  # frozen and prompted: means, variances, present
    plain = method.backbone.plain_numel()
    assert method.inference_parameters() - plain == prompts + head + tii == 5804
    assert method.stored_numbers() - plain == prompts + head + tii + statistics == 7364
    method.eval()
    x, _ = separable(1, range(6), seed=3)
    with torch.no_grad():
        before = method(x)
        for t in method.learning_only_tensors():
            t.copy_(torch.rand_like(t.float()).to(t.dtype) * 100 if t.dtype != torch.bool else ~t)
        torch.testing.assert_close(method(x), before, rtol=0, atol=0)  # prediction never read them

"""HiDe-Prompt: class statistics, task-identity inference, alignment from statistics only, per-task prompts,
and runs (tiny ViT / BERT) that resume."""


import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from engine_helpers import check_resume_equals_uninterrupted, results_without_timing, tiny
from sdlora.config import load_config
from sdlora.data.scenario import TaskInfo
from sdlora.engine import build
from sdlora.methods.class_stats import ClassGaussians, align_classifier
from sdlora.methods.hide_prompt import contrastive

FAST = {"tii_lr": 0.01, "tii_batch_size": 4, "tii_epochs": 5, "ca_epochs": 3, "ca_batch_size": 8,
        "tii_ca_batch_size": 8, "tii_ca_lr": 0.01}
HIDE = {"name": "hide_prompt", "options": {"e_layers": [0, 1], "e_length": 3, **FAST}}
TASKS = [TaskInfo(index=t, known=2 * t, total=2 * t + 2, num_tasks=3) for t in range(3)]


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


def test_task_identity_inference_picks_the_right_task_on_separable_data():
    method = built(HIDE | {"options": HIDE["options"] | {"tii_lr": 0.05, "tii_epochs": 30, "ca_epochs": 20,
                                                          "tii_ca_lr": 0.2, "tii_ca_batch_size": 16}})
    run_tasks(method, steps=1)
    method.eval()
    x, labels = separable(5, range(6), seed=99)  # unseen samples of every class
    with torch.no_grad():
        tasks = method.infer_task(method.query(x))
    # every task is recognised, the first one too after two more (the TII head was aligned on pseudo-features
    # of every seen class drawn from the frozen features' statistics)
    assert tasks.tolist() == (labels // 2).tolist()
    assert method.tii_stats.means.shape == (6, 32) and method.tii_stats.spread.shape == (6, 32, 32)


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


def test_the_loss_is_ce_plus_the_contrastive_term_against_earlier_class_means():
    method = built()
    run_tasks(method, TASKS[:1], steps=1)
    method.begin_task(TASKS[1])
    method.train()
    x, y = separable(2, range(2, 4), seed=3)
    out = method.training_step((x, y), TASKS[1])
    with torch.no_grad():
        feats = method.prompted_features(x, method.training_prompt(1)[None])
    rows = torch.cat([method.tap_stats.means[:2], feats])
    manual = torch.nn.functional.cross_entropy(rows @ rows.T / 0.8, torch.arange(rows.shape[0]))
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
    data["method"] = {"name": "hide_prompt", "options": {"e_layers": [0, 1], "e_length": 2, **FAST}}
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
    budget = ("optimizer", "lr", "momentum", "epochs", "batch_size", "loss")
    assert [getattr(text.train, k) for k in budget] == [getattr(main.train, k) for k in budget]
    assert text.method.classifier.kind == "linear" and text.seeds == [1993, 1994, 1995]
    vision = load_config(CONFIGS / "vision" / "prompts" / "imagenet_r_10_hide_prompt.yaml")
    build.validate_plugins(vision)
    assert tuple(vision.published[k] for k in ("final_accuracy", "final_accuracy_stderr",
                                               "average_incremental_accuracy",
                                               "average_incremental_accuracy_stderr")) == (74.65, 0.14, 78.46, 0.18)
    assert vision.benchmark.increment == vision.benchmark.init_classes == 20 and "Table 2" in vision.source
    t = vision.train
    assert (t.optimizer, t.epochs, t.batch_size, t.scheduler, t.grad_clip) == ("adam", 150, 192, "cosine", 1.0)
    assert t.lr == pytest.approx(0.03 * 24 / 256) and t.head_lr == pytest.approx(t.lr / 10)


def test_two_processes_equal_one(tmp_path):
    """`sdlora train --nproc 2`: the end-of-task statistics, TII training and alignment see the gathered features
    and the same sampling seed on both ranks, so the run is the one-process run (the contrastive term is per
    micro-batch, as the release's per-GPU term, hence off here)."""
    import subprocess
    import sys

    from test_distributed import BENCH, TRAIN, assert_same_run, environment, one_process, write_config

    method = {"name": "hide_prompt", "options": {**HIDE["options"], "contrast_weight": 0.0}}
    config = write_config(tmp_path / "run.yaml", tiny(benchmark=BENCH, method=method, train=TRAIN))
    one_process(config, tmp_path / "one")
    done = subprocess.run([sys.executable, "-m", "sdlora", "train", str(config), "--out", str(tmp_path / "two"),
                           "--quiet", "--nproc", "2"], env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two")

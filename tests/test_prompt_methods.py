"""L2P and DualPrompt: their defining properties, what trains, and runs through the engine (tiny ViT / BERT)."""

import copy
import csv
import io

import pytest
import torch

from engine_helpers import check_resume_equals_uninterrupted, results_without_timing, tiny
from sdlora.config import load_config
from sdlora.data.scenario import TaskInfo
from sdlora.engine import build
from sdlora.engine.runner import run_config
from sdlora.methods.dualprompt import DualPrompt
from sdlora.prompts import cosine_match

L2P = {"name": "l2p", "options": {"pool_size": 4, "prompt_length": 2, "top_n": 2}}
DUAL = {"name": "dualprompt", "options": {"g_layers": [0], "g_length": 2, "e_layers": [1], "e_length": 3}}
TASKS = [TaskInfo(index=t, known=2 * t, total=2 * t + 2, num_tasks=3) for t in range(3)]


def built(method: dict, **train):  # noqa: ANN201
    cfg = load_config(data=tiny(method=method, train=train))
    torch.manual_seed(0)
    return build.build_method(cfg, build.build_backbone(cfg))


def batch(seed: int = 1):  # noqa: ANN201
    torch.manual_seed(seed)
    return torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 1, 0])


def sgd_steps(method, task: TaskInfo, steps: int = 2, lr: float = 0.5) -> None:  # noqa: ANN001
    method.train()
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=lr)
    for step in range(steps):
        x, y = batch(step)
        out = method.training_step((x, y + task.known), task)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()


def test_l2p_selects_the_nearest_keys_and_the_pull_moves_them_to_the_query():
    method = built(L2P)
    method.begin_task(TASKS[0])
    x, y = batch()
    query = method.query(x)
    with torch.no_grad():  # keys 2 and 0 point almost along sample 0's query; 1 and 3 away from it
        method.prompts.keys.copy_(torch.stack([query[0] + 0.3 * query[1], -query[0], query[0], -query[1]]))
    _, idx = method.select(x)
    assert idx[0].tolist() == [2, 0]
    assert idx.tolist() == cosine_match(query, method.prompts.keys).topk(2, dim=1).indices.tolist()
    before = method.prompts.keys.detach().clone()
    method.train()
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.1)
    out = method.training_step((x, y), TASKS[0])
    assert set(out.scalars) == {"ce", "pull"}
    assert out.loss.item() == pytest.approx(float(out.scalars["ce"] + 0.1 * out.scalars["pull"]), rel=1e-6)
    out.loss.backward()
    selected = sorted(set(idx.flatten().tolist()))
    untouched = sorted(set(range(4)) - set(selected))
    assert all(p.grad is None for p in method.backbone.parameters())
    optimizer.step()
    after = method.prompts.keys.detach()
    # each selected key moved towards the mean of the queries that picked it; no other key moved
    for k in selected:
        pickers = query[(idx == k).any(dim=1)]
        assert cosine_match(pickers, after[k:k + 1]).mean() > cosine_match(pickers, before[k:k + 1]).mean()
    assert torch.equal(after[untouched], before[untouched])


def test_l2p_trains_prompts_keys_and_head_only():
    method = built(L2P)
    backbone = copy.deepcopy(method.backbone.export_state_dict())
    method.begin_task(TASKS[0])
    prompts = method.prompts.prompts.detach().clone()
    sgd_steps(method, TASKS[0])
    assert not torch.equal(method.prompts.prompts, prompts)
    after = method.backbone.export_state_dict()
    assert after.keys() == backbone.keys()
    assert all(torch.equal(after[k], backbone[k]) for k in backbone)
    ids = {id(p) for g in method.trainable_parameters() for p in g["params"]}
    assert ids == {id(p) for p in (*method.head.parameters(), method.prompts.prompts, method.prompts.keys)}


def test_dualprompt_e_prompt_is_untouched_after_its_task():
    method = built(DUAL)
    method.begin_task(TASKS[0])
    e0_init = method.prompts.e[0].detach().clone()
    sgd_steps(method, TASKS[0])
    method.end_task(TASKS[0], None)
    e0, k0, g = (t.detach().clone() for t in (method.prompts.e[0], method.prompts.keys[0], method.prompts.g))
    assert not torch.equal(e0, e0_init)  # trained during its task
    method.begin_task(TASKS[1])
    e1 = method.prompts.e[1].detach().clone()
    sgd_steps(method, TASKS[1])
    assert torch.equal(method.prompts.e[0], e0) and torch.equal(method.prompts.keys[0], k0)
    assert not torch.equal(method.prompts.e[1], e1)
    assert not torch.equal(method.prompts.g, g)  # the G-prompt is shared and keeps training
    trained = {id(p) for grp in method.trainable_parameters() for p in grp["params"]}
    assert id(method.prompts.e[0]) not in trained and id(method.prompts.e[1]) in trained


@pytest.mark.parametrize(("prompt", "key"), [(True, False), (False, False), (True, True)],
                         ids=["release", "random-prompt", "copied-key"])
def test_dualprompt_starts_a_tasks_e_prompt_as_the_previous_one(prompt, key):
    """Both releases (shared_prompt_pool True, shared_prompt_key False): at task start E^t = E^{t-1} as trained,
    k_t drawn uniform(-1, 1); `init_from_previous: false` draws E^t too, `key_from_previous: true` copies k_{t-1}."""
    options = {**DUAL["options"], "init_from_previous": prompt, "key_from_previous": key}
    assert (DualPrompt.Options().init_from_previous, DualPrompt.Options().key_from_previous) == (True, False)
    method = built({**DUAL, "options": options})
    method.begin_task(TASKS[0])
    sgd_steps(method, TASKS[0])
    method.end_task(TASKS[0], None)
    e0, k0 = method.prompts.e[0].detach().clone(), method.prompts.keys[0].detach().clone()
    method.begin_task(TASKS[1])
    e1, k1 = method.prompts.e[1], method.prompts.keys[1]
    assert torch.equal(e1, e0) == prompt and torch.equal(k1, k0) == key
    for new in ([e1] if not prompt else []) + ([k1] if not key else []):  # a fresh draw: uniform(-1, 1)
        assert new.abs().max() <= 1 and new.std() > 0.4  # U(-1, 1): std 0.577
    assert e1.data_ptr() != e0.data_ptr() and e1.requires_grad and k1.requires_grad  # a copy that trains alone
    sgd_steps(method, TASKS[1])
    assert torch.equal(method.prompts.e[0], e0) and torch.equal(method.prompts.keys[0], k0)
    assert not torch.equal(method.prompts.e[1], e0)


def test_dualprompt_matches_the_task_whose_key_is_nearest():
    # random E-prompts (not copied), so that the untrained tasks' prompts differ
    method = built({**DUAL, "options": {**DUAL["options"], "init_from_previous": False}})
    for task in TASKS:
        method.begin_task(task)
        method.end_task(task, None)
    method.eval()
    x, _ = batch()
    query = method.query(x)
    with torch.no_grad():
        for k, key in enumerate(method.prompts.keys):
            key.copy_(query[k] + 0.1 * torch.randn_like(query[k]))  # key k near sample k's query
    assert method.match(query[:3]).tolist() == [0, 1, 2]
    # the prediction uses the matched E-prompt: sample 1 alone with E^1 = the batch's row 1
    with torch.no_grad():
        matched = method.features(x[:3])
        forced = method.prompted_features(x[1:2], torch.tensor([1]))
        wrong = method.prompted_features(x[1:2], torch.tensor([0]))
    torch.testing.assert_close(matched[1:2], forced, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(forced, wrong, atol=1e-4)


def rows(folder):  # noqa: ANN001, ANN201
    with (folder / "scalars.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("method", ["l2p", "dualprompt", "coda"])
def test_prompt_method_runs_and_resumes_mid_task(tmp_path, method):
    method = {"l2p": L2P, "dualprompt": DUAL, "coda": CODA}[method]
    data = tiny(method=method, train={"epochs": 2, "optimizer": "adam", "lr": 0.01})
    ref = check_resume_equals_uninterrupted(tmp_path, data)
    assert len(ref["accuracy_curve"]) == 3
    names = {r["name"] for r in rows(tmp_path / "ref" / "seed-3")}
    assert {"method/ce"} <= names and names & {"method/pull", "method/ortho"}


@pytest.mark.parametrize("method", ["l2p", "dualprompt", "coda"])
def test_prompt_method_runs_on_a_text_encoder(tmp_path, method):
    from export_helpers import text_run_config

    data = text_run_config(tmp_path)
    data["method"] = {"l2p": L2P, "dualprompt": DUAL, "coda": CODA}[method]
    result = run_config(load_config(data=data), tmp_path / "run", quiet=True, stream=io.StringIO())
    assert result is not None
    final = results_without_timing(tmp_path / "run" / "seed-3")
    assert len(final["accuracy_curve"]) == 2 and all(0 <= a <= 100 for a in final["accuracy_curve"])


CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["l2p", "dualprompt", "coda_prompt"])
def test_prompt_configs_mirror_the_harness(name):
    main = load_config(CONFIGS / "clinc150.yaml")
    text = load_config(CONFIGS / "baselines" / f"clinc150_{name}.yaml")
    build.validate_plugins(text)
    assert text.backbone == main.backbone and text.train == main.train and text.method.name == name
    assert text.method.classifier == main.method.classifier  # the same class-mean head init, prototypes, SDC
    assert text.benchmark == main.benchmark and text.seeds == [1993, 1994, 1995]
    vision = load_config(CONFIGS / "vision" / "prompts" / f"imagenet_r_10_{name}.yaml")
    assert (vision.train.optimizer, vision.train.epochs, vision.train.batch_size) == ("adam", 50, 128)


#: setting -> (SD-LoRA table, benchmark, classes per task)
SETTINGS = {"imagenet_r_5": ("Table 2", "imagenet_r", 40), "imagenet_r_10": ("Table 2", "imagenet_r", 20),
            "imagenet_r_20": ("Table 2", "imagenet_r", 10), "imagenet_a_10": ("Table 3", "imagenet_a", 20),
            "domainnet_5": ("Table 3", "domainnet", 69), "cifar100_10": ("Table 6", "cifar100", 10),
            "cub200_10": ("Table 6", "cub200", 20)}
#: SD-LoRA (ICLR 2025) Tables 2, 3 and 6 as docs/sdlora-spec.md section 4 transcribes them: Acc, its standard
#: error, AAA, its standard error (percent, 5 runs), in the order of SETTINGS. None: the table has no row
#: (HiDe-Prompt is absent from Table 6).
TABLES = {
    "l2p": [(73.04, 0.71, 76.94, 0.41), (71.26, 0.44, 76.13, 0.46), (68.97, 0.51, 74.16, 0.32),
            (42.94, 1.27, 51.40, 1.95), (70.26, 0.25, 75.83, 0.98), (83.18, 1.20, 87.69, 1.05),
            (65.18, 2.49, 76.12, 1.27)],
    "dualprompt": [(69.99, 0.57, 72.24, 0.41), (68.22, 0.20, 73.81, 0.39), (65.23, 0.45, 71.30, 0.16),
                   (45.49, 0.96, 54.68, 1.24), (68.26, 0.90, 73.84, 0.45), (81.48, 0.86, 86.41, 0.66),
                   (68.00, 1.06, 79.40, 0.88)],
    "coda_prompt": [(76.63, 0.27, 80.30, 0.28), (74.05, 0.41, 78.14, 0.39), (69.38, 0.33, 73.95, 0.63),
                    (45.36, 0.78, 57.03, 0.94), (70.58, 0.53, 76.68, 0.44), (86.31, 0.12, 90.67, 0.22),
                    (71.92, 0.33, 78.76, 0.65)],
    "hide_prompt": [(74.77, 0.25, 78.15, 0.24), (74.65, 0.14, 78.46, 0.18), (73.59, 0.19, 77.93, 0.19),
                    (42.70, 0.60, 56.32, 0.40), (72.20, 0.08, 77.01, 0.04), None, None],
}
PUBLISHED_KEYS = ("final_accuracy", "final_accuracy_stderr", "average_incremental_accuracy",
                  "average_incremental_accuracy_stderr")


@pytest.mark.parametrize(("method", "setting"), [(m, s) for m in TABLES for s in SETTINGS],
                         ids=[f"{s}_{m}" for m in TABLES for s in SETTINGS])
def test_prompt_vision_configs_quote_the_papers_tables(method, setting):
    cfg = load_config(CONFIGS / "vision" / "prompts" / f"{setting}_{method}.yaml")
    build.validate_plugins(cfg)
    table, benchmark, per_task = SETTINGS[setting]
    assert cfg.method.name == method and cfg.name == f"{method}-{setting}".replace("_", "-")
    assert (cfg.benchmark.name, cfg.benchmark.init_classes, cfg.benchmark.increment) == (benchmark, per_task, per_task)
    assert table in cfg.source
    expected = TABLES[method][list(SETTINGS).index(setting)]
    if expected is None:  # no row in the paper: no published numbers, and the file says why
        assert cfg.published is None and "no HiDe-Prompt row" in cfg.source
    else:
        assert tuple(cfg.published[k] for k in PUBLISHED_KEYS) == expected
    # the SD-LoRA harness's data, backbone, class orders, loss and seeds, whatever the method
    assert cfg.benchmark.options["normalize"] == "none" and cfg.benchmark.class_order == "permutation"
    assert cfg.backbone.options["model"] == "vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert build.resolve_classifier(cfg).loss == "current" and cfg.seeds == [1993, 1994, 1995, 1996, 1997]


CODA = {"name": "coda_prompt", "options": {"pool_size": 6, "prompt_length": 4, "layers": [0, 1],
                                           "ortho_weight": 0.1}}


def test_coda_new_components_are_orthogonal_to_the_old_ones():
    method = built(CODA)
    method.begin_task(TASKS[0])
    keys, attention, prompts = method.prompts.all()
    assert keys.shape == attention.shape == (2, 2, 32) and prompts.shape == (2, 2, 4, 32)
    # at the start everything is orthonormal: the orthogonality penalty is zero
    assert method.orthogonality().item() == pytest.approx(0.0, abs=1e-10)
    sgd_steps(method, TASKS[0])
    method.end_task(TASKS[0], None)
    old = [t.detach().clone() for t in method.prompts.all()]
    assert method.orthogonality().item() > 1e-6  # training moved the first task's components
    method.begin_task(TASKS[1])
    for before, now in zip(old, method.prompts.all(), strict=True):
        assert now.shape[1] == 4 and torch.equal(now[:, :2], before)  # old components kept as they were
        for layer in range(2):
            new_rows, old_rows = now[layer, 2:].flatten(1), before[layer].flatten(1)
            torch.testing.assert_close(new_rows @ old_rows.T, torch.zeros(2, 2), rtol=0, atol=1e-5)
            torch.testing.assert_close(new_rows @ new_rows.T, torch.eye(2), rtol=0, atol=1e-5)
    sgd_steps(method, TASKS[1])
    assert all(torch.equal(now[:, :2], before) for before, now in zip(old, method.prompts.all(), strict=True))
    trained = {id(p) for g in method.trainable_parameters() for p in g["params"]}
    assert trained >= {id(method.prompts.keys[1]), id(method.prompts.prompts[1])}
    assert not trained & {id(method.prompts.keys[0]), id(method.prompts.attention[0]), id(method.prompts.prompts[0])}


def test_coda_weights_are_attention_masked_cosines_and_the_ortho_loss_trains():
    method = built(CODA)
    method.begin_task(TASKS[0])
    x, y = batch()
    query = method.query(x)
    keys, attention, prompts = method.prompts.all()
    alpha = method.weights(query, keys, attention)
    manual = torch.stack([torch.stack([F_cos(query[b] * attention[layer, m], keys[layer, m]) for m in range(2)])
                          for layer in range(2) for b in range(4)]).reshape(2, 4, 2)
    torch.testing.assert_close(alpha, manual, rtol=1e-5, atol=1e-6)
    method.train()
    out = method.training_step((x, y), TASKS[0])
    assert out.loss.item() == pytest.approx(float(out.scalars["ce"] + 0.1 * out.scalars["ortho"]), rel=1e-6)


def F_cos(a, b):  # noqa: ANN001, ANN201, N802
    return torch.nn.functional.cosine_similarity(a, b, dim=0)


def test_prompt_run_predicts_from_its_folder_but_refuses_a_plain_export(tmp_path, capsys):
    from sdlora.cli import main
    from sdlora.serving.predict import load_run

    data = tiny(method=L2P, train={"epochs": 1})
    run_config(load_config(data=data), tmp_path / "run", quiet=True, stream=io.StringIO())
    classifier = load_run(tmp_path / "run")
    from sdlora.engine.restore import restore_run

    run = restore_run(tmp_path / "run", None)
    x, _ = batch()
    with torch.no_grad():
        expected = run.method.eval()(x).argmax(1)
    assert torch.equal(classifier.logits(list(x)).argmax(1), expected)  # the prompts are used by predict
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out.safetensors")]) == 1
    assert "cannot be merged" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("method", ["l2p", "dualprompt", "coda"])
def test_text_encoder_stays_bit_identical_while_prompts_train(tmp_path, method):
    from export_helpers import text_run_config

    data = text_run_config(tmp_path)
    data["method"] = {"l2p": L2P, "dualprompt": DUAL, "coda": CODA}[method]
    cfg = load_config(data=data)
    backbone = build.build_backbone(cfg)
    model = build.build_method(cfg, backbone)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    task = TaskInfo(index=0, known=0, total=2, num_tasks=2)
    model.begin_task(task)
    prompts = [p.detach().clone() for p in model.prompts.parameters()]
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=0.05, weight_decay=0.1)
    model.train()
    inputs, labels = backbone.collate([("turn on the lights", 0), ("what time is it", 1), ("lights off", 0)])
    for _ in range(2):
        optimizer.zero_grad()
        model.training_step((inputs, labels), task).loss.backward()
        optimizer.step()
    after = backbone.export_state_dict()
    assert after.keys() == {k.replace(".attention.self.base.", ".attention.self.") for k in before}
    assert all(torch.equal(after[k.replace(".attention.self.base.", ".attention.self.")], v)
               for k, v in before.items())
    assert all(p.grad is None for p in backbone.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(prompts, model.prompts.parameters(), strict=True))

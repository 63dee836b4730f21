"""Baselines in the harness: sequential LoRA (plain, decoupled), InfLoRA, full fine-tuning, joint training,
SD-LoRA's Table 4 ablations, and the CLINC150 baseline configs. Every run is the tiny synthetic config."""

import dataclasses
import io
import json
from pathlib import Path

import pytest
import timm
import torch

from engine_helpers import TINY_VIT, check_resume_equals_uninterrupted, tiny
from sdlora.adapters.subspace import design_down, update_basis
from sdlora.backbones.hf_encoder import ATTENTION_TARGETS
from sdlora.config import ClassifierConfig, load_config
from sdlora.engine import build
from sdlora.engine.runner import run_config
from sdlora.engine.trainer import Trainer
from sdlora.method_config import HEAD_TRAINING
from sdlora.methods.inflora import InfLoRA, key_value_targets
from sdlora.report import run_label

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TWO_TASKS = {"benchmark": {"num_tasks": 2}, "train": {"epochs": 1, "lr": 0.05}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread avoids oversubscription on a shared CPU (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def trainer_for(tmp_path, data, name="run", on_checkpoint=None):
    cfg = load_config(data=data)
    return Trainer(cfg, cfg.seeds[0], tmp_path / name, torch.device("cpu"), build.build_benchmark(cfg),
                   quiet=True, on_checkpoint=on_checkpoint)


def snapshots(tmp_path, data, grab):
    """Run `data`; returns grab(method) taken after every finished task."""
    taken = []
    holder = {}

    def hook(task, epochs, finished):
        if finished:
            taken.append(grab(holder["trainer"].method))

    holder["trainer"] = trainer = trainer_for(tmp_path, data, on_checkpoint=hook)
    result = trainer.run()
    return taken, result, trainer


def run(tmp_path, data, name="run", **kw):
    out = tmp_path / name
    run_config(load_config(data=data), out, quiet=True, stream=io.StringIO(), **kw)
    return json.loads((out / "seed-3" / "results.json").read_text())


# -- sequential LoRA ---------------------------------------------------------------------------------


def lora_state(method):
    return {k: v.clone() for k, v in method.lora.state_tensors().items()}


def test_seq_lora_keeps_training_one_lora(tmp_path):
    data = tiny(method={"name": "seq_lora", "options": {"rank": 2}}, train={"epochs": 1})
    (after1, after2, after3), result, trainer = snapshots(tmp_path, data, lora_state)
    ups = [k for k in after1 if k.endswith(".up")]
    assert ups == ["blocks.0.attn.qkv.up", "blocks.1.attn.qkv.up"]  # q, v slices of both blocks
    for key in after1:  # the same LoRA, still training in tasks 2 and 3
        assert after1[key].shape == after2[key].shape == after3[key].shape
        assert not torch.equal(after1[key], after2[key]) and not torch.equal(after2[key], after3[key])
    adapter = sum(p.numel() for p in trainer.method.lora.trainable_parameters())
    assert adapter == 2 * (2 * 2 * 32 + 2 * 32 * 2)  # 2 blocks x 2 slices x (A: 2x32 + B: 32x2)
    assert result["trainable_parameters"] == [adapter + 2 * 33] * 3  # never grows: LoRA + new head rows
    # k rows of the fused qkv are never touched
    wrapper = trainer.method.lora.wrappers["blocks.0.attn.qkv"]
    assert wrapper.delta_weight()[32:64].abs().max() == 0 and wrapper.delta_weight()[:32].abs().max() > 0


def test_decoupled_lora_is_magnitude_times_unit_direction(tmp_path):
    data = tiny(method={"name": "seq_lora", "options": {"rank": 2, "decoupled": True}}, **TWO_TASKS)
    (after1, after2), result, trainer = snapshots(tmp_path, data, lora_state)
    lora = trainer.method.lora
    alpha = float(lora.magnitude.detach())
    assert after1["magnitude"] != 0 and after2["magnitude"] != after1["magnitude"]  # starts at 0, learns
    assert not torch.equal(after1["blocks.0.attn.qkv.down"], after2["blocks.0.attn.qkv.down"])
    for wrapper in lora.wrappers.values():  # ||W_s - W0_s||_F = |alpha| for every adapted slice
        delta = wrapper.delta_weight()
        for a, b in wrapper.bounds:
            assert torch.linalg.norm(delta[a:b]).item() == pytest.approx(abs(alpha), rel=1e-4)
    assert [info["magnitude"] for info in result["task_info"]] == pytest.approx(
        [float(after1["magnitude"]), float(after2["magnitude"])])


@pytest.mark.parametrize("decoupled", [False, True], ids=["plain", "decoupled"])
def test_lora_layer_equals_its_dense_weight(decoupled):
    from sdlora.adapters.plain_lora import PlainLoRA
    from sdlora.testing import tiny_vit

    torch.manual_seed(0)
    model = tiny_vit()
    lora = PlainLoRA(model, ["blocks.*.attn.qkv[q,v]"], 3, init="random", decoupled=decoupled,
                     magnitude_init=0.7)
    wrapper = lora.wrappers["blocks.1.attn.qkv"]
    x = torch.randn(4, 5, 48)
    w0 = wrapper.base.weight.detach().clone()
    # the independent oracle: W0 + c B A on the q and v row blocks, k rows untouched
    delta = torch.zeros_like(w0)
    for s, (a, b) in enumerate([(0, 48), (96, 144)]):
        ba = wrapper.up[s].detach() @ wrapper.down[s].detach()
        delta[a:b] = ba * (0.7 / torch.linalg.norm(ba) if decoupled else 1.0)
    expected = torch.nn.functional.linear(x, w0 + delta, wrapper.base.bias)
    assert torch.allclose(wrapper(x), expected, atol=1e-5)
    assert torch.allclose(wrapper.delta_weight(), delta, atol=1e-6)
    if not decoupled:
        lora.merge_task()  # W0 += B A in place, B = 0: the same function
        assert torch.allclose(wrapper(x), expected, atol=1e-5)
        assert torch.equal(wrapper.up, torch.zeros_like(wrapper.up))


def test_lora_export_is_a_plain_timm_model(tmp_path):
    for name in ("seq_lora", "inflora"):
        data = tiny(method={"name": name, "options": {"rank": 2}}, **TWO_TASKS)
        trainer = trainer_for(tmp_path, data, name=name)
        trainer.run()
        method = trainer.method.eval()
        state = method.export_state_dict()
        vit = timm.create_model(TINY_VIT["model"], pretrained=False, num_classes=0,
                                **TINY_VIT["model_kwargs"])
        vit.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("backbone.")}, strict=True)
        x = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            assert torch.allclose(vit.eval()(x), method.features(x), atol=1e-5)


# -- InfLoRA -----------------------------------------------------------------------------------------


def test_inflora_targets_are_key_and_value():
    assert key_value_targets(["blocks.*.attn.qkv[q,v]"]) == ["blocks.*.attn.qkv[k,v]"]
    mapped = {kind: key_value_targets(targets) for kind, targets in ATTENTION_TARGETS.items()}
    assert mapped["bert"] == ["encoder.layer.*.attention.self.key", "encoder.layer.*.attention.self.value"]
    assert mapped["distilbert"] == ["transformer.layer.*.attention.k_lin",
                                    "transformer.layer.*.attention.v_lin"]
    assert mapped["mpnet"] == ["encoder.layer.*.attention.attn.k", "encoder.layer.*.attention.attn.v"]
    assert mapped["deberta-v2"] == ["encoder.layer.*.attention.self.key_proj",
                                    "encoder.layer.*.attention.self.value_proj"]


def test_designed_down_is_orthogonal_to_the_subspace_even_when_rank_deficient():
    torch.manual_seed(0)
    h = torch.randn(16, 5, dtype=torch.float64)  # inputs span only 5 of 16 dimensions
    basis = update_basis(torch.zeros(16, 0, dtype=torch.float64), h @ h.T, 0.9)
    eye = torch.eye(basis.shape[1], dtype=torch.float64)
    assert 1 <= basis.shape[1] < 5 and torch.allclose(basis.T @ basis, eye, atol=1e-10)
    h2 = torch.randn(16, 3, dtype=torch.float64) + h[:, :3]
    down = design_down(h2 @ h2.T, basis, rank=8)  # rank > what the data spans outside the basis
    assert down.shape == (8, 16) and (down @ basis).abs().max() < 1e-10
    assert torch.allclose(down @ down.T, torch.eye(8, dtype=torch.float64), atol=1e-10)
    # the top direction of the projected covariance comes first
    p = torch.eye(16, dtype=torch.float64) - basis @ basis.T
    top = torch.linalg.eigh(p @ h2 @ h2.T @ p).eigenvectors[:, -1]
    assert abs(float(down[0] @ top)) == pytest.approx(1.0, abs=1e-8)


def test_dualgpm_energy_criterion():
    gram = torch.diag(torch.tensor([6.0, 2.0, 1.5, 0.5], dtype=torch.float64))
    first = update_basis(torch.zeros(4, 0, dtype=torch.float64), gram, 0.9)  # cumsum .6 .8 .95 1.0 < .9: 2
    assert torch.allclose(first.abs(), torch.eye(4, dtype=torch.float64)[:, :2])
    flat = torch.eye(4, dtype=torch.float64)  # half of its energy is already captured by e1, e2
    assert update_basis(first, flat, 0.7).shape[1] == 3  # .5 + .25 >= .7
    assert update_basis(first, flat, 0.9).shape[1] == 4  # .5 + .25 + .25
    assert update_basis(first, flat, 0.5).shape[1] == 2  # nothing to add


def test_inflora_update_is_orthogonal_to_old_inputs(tmp_path, monkeypatch):
    seen = []
    real = InfLoRA.prepare_task

    def spy(self, task, loader):
        real(self, task, loader)
        seen.append(({k: m.clone() for k, m in self.subspaces.items()},
                     {k: w.down.detach().clone() for k, w in self.lora.wrappers.items()}))

    monkeypatch.setattr(InfLoRA, "prepare_task", spy)
    data = tiny(method={"name": "inflora", "options": {"rank": 2}}, **TWO_TASKS)
    trainer = trainer_for(tmp_path, data)
    result = trainer.run()
    method = trainer.method
    (m1, a1), (m2, a2) = seen
    assert all(m.shape[1] == 0 for m in m1.values()) and all(m.shape[1] >= 1 for m in m2.values())
    for name, wrapper in method.lora.wrappers.items():
        assert torch.equal(a2[name][0], a2[name][1])  # one designed A for the k and v slices
        assert a2[name].abs().max() > 0
        assert (a2[name].double() @ m2[name]).abs().max() < 1e-5  # A_2 M_1 = 0
        up, down = method.lora.merged_factors[1][name]  # the merged task-2 update B_2 A_2 ...
        assert up.abs().max() > 0  # ... trained
        assert ((up @ down).double() @ m2[name]).abs().max() < 1e-6  # ... and blind to span(M_1)
        assert wrapper.delta_weight().abs().max() == 0  # merged: B reset to 0
        assert not wrapper.down.requires_grad and wrapper.down.grad is None  # A never trains
    assert result["trainable_parameters"] == [2 * 33 + 2 * 2 * 32 * 2] * 2  # head rows + B only
    dims = [info["subspace_dims"] for info in result["task_info"]]
    assert all(d2 >= d1 >= 1 for d1, d2 in zip(dims[0], dims[1], strict=True))
    assert [info["threshold"] for info in result["task_info"]] == pytest.approx([0.95, 0.975])


def old_task_drift(tmp_path, method):
    """Mean relative change of task-1 training features between the end of task 1 and of task 2."""
    data = tiny(method=method, train={"epochs": 2, "lr": 0.05}, benchmark={"num_tasks": 2})
    holder = {}

    def features(m):
        x = holder["x"]
        m.eval()
        with torch.no_grad():
            return m.features(x)

    def grab(m):
        if "x" not in holder:
            train = holder["trainer"].scenario.train_set(0)
            holder["x"] = torch.stack([train[i][0] for i in range(len(train))])
        return features(m)

    def hook(task, epochs, finished):
        if finished:
            taken.append(grab(holder["trainer"].method))

    taken = []
    holder["trainer"] = trainer_for(tmp_path, data, name=method["name"], on_checkpoint=hook)
    holder["trainer"].run()
    f1, f2 = taken
    return float(((f2 - f1).norm(dim=1) / f1.norm(dim=1)).mean())


def test_inflora_moves_old_task_features_less_than_seq_lora(tmp_path):
    inflora = old_task_drift(tmp_path, {"name": "inflora", "options": {"rank": 2}})
    same_targets = {"rank": 2, "targets": ["blocks.*.attn.qkv[k,v]"]}
    seq = old_task_drift(tmp_path, {"name": "seq_lora", "options": same_targets})
    assert 0 < inflora < seq


TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 37}
WORDS = ["alarm clock", "pay my bill", "weather in paris", "play some jazz"]


def text_config(tmp_path):
    """4 intents x 6 texts of different lengths (so batches pad), 2 tasks, a tiny random BERT."""
    rows = ["text,label"]
    for label, phrase in enumerate(WORDS):
        rows += [f"{' '.join([phrase] * (1 + i % 3))} {i},{label}" for i in range(6)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "test.csv").write_text("\n".join(rows[:1] + rows[1::2]) + "\n")
    files = {"train_file": "train.csv", "test_file": "test.csv"}
    return tiny(benchmark={"name": "text_files", "data_root": str(tmp_path), "init_classes": 2,
                           "increment": 2, "options": files},
                backbone={"name": "hf_encoder",
                          "options": {"random_init_config": TINY_BERT, "max_length": 16}},
                method={"name": "inflora", "options": {"rank": 2}}, train={"epochs": 1, "batch_size": 4})


def test_inflora_on_text_targets_key_value_and_ignores_padding(tmp_path):
    trainer = trainer_for(tmp_path, text_config(tmp_path))
    result = trainer.run()
    assert result["status"] == "complete" and len(result["accuracy_matrix"]) == 2
    assert all(info["subspace_dims"] for info in result["task_info"])
    method = trainer.method
    assert list(method.lora.wrappers) == [f"encoder.layer.{i}.attention.self.{kv}" for i in (0, 1)
                                          for kv in ("key", "value")]
    train = trainer.scenario.train_set(0)
    samples = [train[i] for i in range(len(train))]
    padded = method._covariances([trainer.backbone.collate(samples)])  # one batch, padded to the longest
    alone = method._covariances([trainer.backbone.collate([s]) for s in samples])  # no padding at all
    assert trainer.backbone.collate(samples)[0]["attention_mask"].eq(0).any()
    for name in padded:
        assert torch.allclose(padded[name], alone[name], rtol=1e-4, atol=1e-6)


# -- full fine-tuning, joint -------------------------------------------------------------------------


def test_finetune_trains_the_backbone_and_checkpoints_it(tmp_path):
    data = tiny(method={"name": "finetune"}, **TWO_TASKS)
    (w1, w2), result, trainer = snapshots(
        tmp_path, data, lambda m: m.backbone.model.blocks[0].mlp.fc1.weight.detach().clone())
    initial = build.build_backbone(load_config(data=data)).model.blocks[0].mlp.fc1.weight
    assert not torch.equal(initial, w1) and not torch.equal(w1, w2)
    total = sum(p.numel() for p in trainer.backbone.model.parameters())
    assert result["trainable_parameters"] == [total + 2 * 33] * 2
    assert result["status"] == "complete" and len(result["accuracy_matrix"]) == 2
    _, tensors = trainer.method.checkpoint_state()
    assert torch.equal(tensors["backbone.blocks.0.mlp.fc1.weight"], w2)


def test_joint_is_one_task_over_all_classes(tmp_path):
    result = run(tmp_path, tiny(method={"name": "seq_lora", "options": {"rank": 2}},
                                benchmark={"init_classes": 6}, train={"epochs": 1}))
    assert result["num_tasks"] == 1 and result["task_test_counts"] == [18]
    assert len(result["accuracy_matrix"]) == 1 and result["metrics"]["final_accuracy"] >= 0
    assert result["trainable_parameters"] == [2 * (2 * 2 * 32 * 2) + 6 * 33]


# -- SD-LoRA Table 4 ablations -----------------------------------------------------------------------


def adapter_state(method):
    return {k: v.clone() for k, v in method.adapter.state_tensors().items()}


def test_first_direction_only_adds_no_direction_after_task_1(tmp_path):
    data = tiny(method={"name": "sdlora", "options": {"rank": 2, "ablation": "first_direction_only"}},
                train={"epochs": 1})
    (s1, s2, s3), result, trainer = snapshots(tmp_path, data, adapter_state)
    assert trainer.method.adapter.ranks == [2]
    for key in ("blocks.0.attn.qkv.past_down", "blocks.0.attn.qkv.past_up"):
        assert s1[key].shape[1 if key.endswith("down") else 2] == 2
        assert torch.equal(s1[key], s3[key])  # the first direction, frozen
    assert s1["magnitudes"].shape == s3["magnitudes"].shape == (1,)
    assert s1["magnitudes"] != s2["magnitudes"] != s3["magnitudes"]  # only the magnitude keeps learning
    assert result["trainable_parameters"][1:] == [1 + 2 * 33] * 2
    assert [info["ranks"] for info in result["task_info"]] == [[2]] * 3


@pytest.mark.parametrize("train", [
    {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 0.1, "lr": 0.05},
    {"optimizer": "adamw", "weight_decay": 0.1, "lr": 0.01},
], ids=["sgd-momentum-wd", "adamw-wd"])
@pytest.mark.parametrize("mode", ["continuous", "official", "paper"])
def test_fixed_old_keeps_old_components_exactly(tmp_path, train, mode):
    options = {"rank": 2, "ablation": "fixed_old", "current_mode": mode}
    data = tiny(method={"name": "sdlora", "options": options}, train={**train, "epochs": 1})
    result = run(tmp_path, data)
    m1, m2, m3 = [info["magnitudes"] for info in result["task_info"]]
    assert m3[:2] == m2[:2] and m2[:1] == m1  # old magnitudes bit-identical, under weight decay too
    init = 1.0 if mode == "paper" else 0.8
    assert m1[0] != init and m2[1] != init and m3[2] != init  # the current one trains
    assert [info["ranks"] for info in result["task_info"]] == [[2], [2, 2], [2, 2, 2]]


def test_ablation_needs_the_plain_variant():
    with pytest.raises(ValueError, match="ablation 'fixed_old' needs variant 'plain'"):
        build.validate_plugins(load_config(data=tiny(
            method={"name": "sdlora", "options": {"ablation": "fixed_old", "variant": "kd"}})))


# -- resume: every checkpoint holds what it needs ----------------------------------------------------


SDC = {"classifier": {"kind": "prototypes", "drift": "sdc"}}


@pytest.mark.parametrize(("method", "train"), [
    ({"name": "seq_lora", "options": {"rank": 2, "decoupled": True}}, {}),
    ({"name": "inflora", "options": {"rank": 2}}, {}),
    ({"name": "inflora", "options": {"rank": 2}}, SDC),
    ({"name": "finetune"}, {}),
    ({"name": "sdlora", "options": {"rank": 2, "ablation": "first_direction_only"}}, {}),
    ({"name": "sdlora", "options": {"rank": 2, "ablation": "fixed_old"}}, {}),
], ids=["seq_lora-decoupled", "inflora", "inflora-prototypes-sdc", "finetune", "first_direction_only",
        "fixed_old"])
def test_resume_mid_task_equals_uninterrupted_run(tmp_path, method, train):
    train = {"epochs": 2, "optimizer": "adamw", "lr": 0.01, "weight_decay": 0.05, **train}
    check_resume_equals_uninterrupted(tmp_path, tiny(method=method, train=train, benchmark={"num_tasks": 2}))


# -- configs -----------------------------------------------------------------------------------------


def test_clinc150_baseline_configs_mirror_the_sdlora_config():
    main = load_config(CONFIGS / "clinc150.yaml")
    labels = {run_label({"config": {"name": main.name}})}
    methods = {}
    for key in ("seq_lora", "inflora", "ncm", "joint", "linear_probe"):
        cfg = load_config(CONFIGS / "baselines" / f"clinc150_{key}.yaml")
        build.validate_plugins(cfg)
        assert cfg.backbone == main.backbone and cfg.train == main.train and cfg.eval_split == "test"
        assert cfg.benchmark.name == "clinc150" and cfg.benchmark.class_order == "permutation"
        assert cfg.seeds == [1993, 1994, 1995]
        labels.add(run_label({"config": {"name": cfg.name}}))
        methods[key] = cfg
    assert len(labels) == 6  # every run is labelled distinctly in `sdlora report`
    assert methods["joint"].benchmark.init_classes == 150 and methods["joint"].method.name == "seq_lora"
    assert methods["joint"].method.options["rank"] == main.method.options["rank"] == 8
    assert methods["seq_lora"].method.options["rank"] == methods["inflora"].method.options["rank"] == 8
    incremental = ("seq_lora", "inflora", "ncm", "linear_probe")
    assert all(methods[k].benchmark.init_classes == 15 for k in incremental)
    shared = build.validate_plugins(main).method.classifier  # configs/clinc150.yaml's shared `classifier:`
    for key in ("seq_lora", "inflora", "joint"):  # the same classifier: class-mean head init, prototypes, SDC,
        assert methods[key].classifier == main.classifier  # inherited, not repeated in their files
        assert build.validate_plugins(methods[key]).method.classifier == shared
    # a linear probe's and NCM's features never drift: no SDC; NCM has no head
    assert methods["linear_probe"].classifier is None and methods["ncm"].classifier is None
    # the linear probe keeps the cosine prototypes its tables were run with (with LDA on features that never move,
    # it would be configs/baselines/clinc150_frozen_lda.yaml)
    assert methods["linear_probe"].method.classifier == dataclasses.replace(main.classifier, kind="prototypes",
                                                                            drift=None, sdc_sigma=None, loss=None)
    assert build.validate_plugins(methods["linear_probe"]).method.classifier.loss == main.classifier.loss == "current"
    frozen_lda = build.validate_plugins(load_config(CONFIGS / "baselines" / "clinc150_frozen_lda.yaml"))
    assert frozen_lda.method.name == "ncm" and frozen_lda.train == main.train
    assert frozen_lda.method.classifier == ClassifierConfig("lda", "none", shrinkage="oas", priors="uniform",
                                                           **HEAD_TRAINING)
    frozen_rf = build.validate_plugins(load_config(CONFIGS / "baselines" / "clinc150_frozen_ridge_rf.yaml"))
    assert frozen_rf.method.name == "ncm" and frozen_rf.train == main.train and frozen_rf.seeds == [1993]
    assert frozen_rf.method.classifier == ClassifierConfig("ridge", "none", shrinkage=1e-2, random_features=4096,
                                                           feature_map="relu", **HEAD_TRAINING)
    assert methods["ncm"].method.classifier == ClassifierConfig()


@pytest.mark.parametrize("options, expected", [({}, 0.0), ({"magnitude_weight_decay": 0.05}, 0.05)])
def test_magnitudes_get_no_weight_decay_unless_asked(options, expected):
    """train.weight_decay decays the directions and the head; the magnitudes only by magnitude_weight_decay."""
    cfg = load_config(data=tiny(method={"name": "sdlora", "options": {"rank": 2, **options}},
                                train={"weight_decay": 0.1}))
    method = build.build_method(cfg, build.build_backbone(cfg))
    method.adapter.begin_task()
    groups = method.trainable_parameters()
    alpha = method.adapter.magnitudes.alpha
    (group,) = [g for g in groups if any(p is alpha for p in g["params"])]
    assert group["weight_decay"] == expected and len(group["params"]) == 1
    assert all("weight_decay" not in g for g in groups if g is not group)  # the rest: train.weight_decay


def test_norm_with_continuous_mode_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="norm 'product' has no effect with current_mode 'continuous'"):
        build.validate_plugins(load_config(data=tiny(
            method={"name": "sdlora", "options": {"norm": "product", "current_mode": "continuous"}})))

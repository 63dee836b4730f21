"""Length-aware passes: the order is restored exactly, features agree with dataset-order batches within float
rounding, padding drops; length buckets for training keep every sample once."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from sdlora.backbones.hf_encoder import HFEncoder
from sdlora.config import resolve_options
from sdlora.data.length_order import (
    MAX_PADDING,
    LengthBatches,
    bucket_order,
    dataset_order,
    longest_first,
    pass_loader,
    similar_length_batches,
    token_counts,
)
from sdlora.methods.prototypes import collect_features

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 37}
WORDS = "book a table for two please what is the weather like in paris tomorrow morning play some jazz".split()

#: features of the same text from a length-sorted batch against a dataset-order batch: float32 rounding of
#: other matrix shapes (the padding itself is masked out), relative to the feature's scale
FEATURE_RTOL = 1e-5


def texts(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """n texts of 1 to 14 words (so a batch in dataset order pads a lot), labels 0..4."""
    rng = random.Random(seed)
    return [(" ".join(rng.choices(WORDS, k=rng.randint(1, 14))), i % 5) for i in range(n)]


@pytest.fixture(scope="module")
def encoder() -> HFEncoder:
    return HFEncoder(resolve_options(HFEncoder.Options, {"random_init_config": TINY_BERT, "max_length": 16},
                                     "backbone.options")).eval()


def test_longest_first_is_stable_and_restore_is_exact():
    lengths = [3, 7, 3, 1, 7, 7, 2]
    assert longest_first(lengths) == [1, 4, 5, 0, 2, 6, 3]  # ties keep their dataset order
    rng = random.Random(1)
    for n in (1, 2, 17, 300):
        sampler = LengthBatches([rng.randint(1, 40) for _ in range(n)], batch_size=16)
        yielded = [i for batch in sampler for i in batch]
        assert sorted(yielded) == list(range(n))
        rows = torch.arange(n)[torch.as_tensor(yielded)]  # what a pass yields, in the sampler's order
        assert torch.equal(sampler.restore(rows), torch.arange(n))
        assert torch.equal(sampler.restore(rows[:, None].repeat(1, 3).float())[:, 2], torch.arange(n).float())
    with pytest.raises(ValueError, match="rows for a pass"):
        LengthBatches([1, 2], 4).restore(torch.zeros(3))


def test_similar_length_batches_bound_samples_and_padding():
    rng = random.Random(3)
    lengths = [rng.choice([4, 5, 6, 7, 8, 9, 10, 30, 32]) for _ in range(500)]
    batches = similar_length_batches(longest_first(lengths), lengths, 64)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for batch in batches:
        assert len(batch) <= 64
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded - sum(lengths[i] for i in batch) <= MAX_PADDING * padded
    assert similar_length_batches([], [], 8) == []
    assert similar_length_batches([0, 1, 2], [5, 5, 5], 2) == [[0, 1], [2]]


def test_dataset_order_leaves_ordinary_loaders_alone():
    rows = torch.arange(5)
    assert dataset_order(rows, DataLoader(list(range(5)))) is rows
    assert dataset_order(rows, object()) is rows


def test_sample_lengths_are_the_real_tokens(encoder):
    data = texts(40)
    lengths = encoder.sample_lengths(data)
    for (text, _), n in zip(data, lengths, strict=True):
        inputs, _ = encoder.collate([(text, 0)])
        assert inputs["attention_mask"].sum() == n
    assert max(lengths) <= 16  # truncated like a batch
    assert HFEncoder.__mro__[1].sample_lengths(encoder, data) is None  # the base class: fixed shapes


def test_sorted_pass_restores_order_and_matches_unsorted_features(encoder):
    data = texts(203)
    plain = pass_loader(data, encoder.collate, 32)
    assert not isinstance(plain.batch_sampler, LengthBatches)
    sorted_ = pass_loader(data, encoder.collate, 32, encoder.sample_lengths)
    assert isinstance(sorted_.batch_sampler, LengthBatches)
    cpu = torch.device("cpu")
    f_plain, y_plain = collect_features(encoder, plain, cpu)
    f_sorted, y_sorted = collect_features(encoder, sorted_, cpu)
    assert torch.equal(y_sorted, y_plain)  # labels (and rows) back in dataset order exactly
    scale = f_plain.abs().max()
    assert (f_sorted - f_plain).abs().max() <= FEATURE_RTOL * scale
    # without restoring, the rows would be another order: the restore is what makes them agree
    assert not torch.equal(torch.cat([y for _, y in sorted_]), y_plain)


def test_sorted_pass_processes_fewer_padding_tokens(encoder):
    data = texts(512)
    processed_plain, real = token_counts(pass_loader(data, encoder.collate, 64))
    processed_sorted, real_sorted = token_counts(pass_loader(data, encoder.collate, 64, encoder.sample_lengths))
    assert real_sorted == real
    assert processed_plain / real > 1.4  # dataset order: every batch pads to its longest text
    assert processed_sorted / real < 1.1  # sorted: a batch spans about 1 - 2 lengths
    assert processed_sorted < processed_plain


def test_strided_shards_sorted_then_interleaved_give_dataset_order(encoder):
    """What a 2-process run does: each rank sorts its strided shard, restores it, and `gather_shards`
    interleaves the ranks' rows (done here by hand, without a process group)."""
    data = texts(61)
    cpu = torch.device("cpu")
    ref, labels = collect_features(encoder, pass_loader(data, encoder.collate, 8), cpu)
    n = 2
    out = torch.empty_like(ref)
    out_labels = torch.empty_like(labels)
    for r in range(n):
        shard = Subset(data, range(r, len(data), n))
        f, y = collect_features(encoder, pass_loader(shard, encoder.collate, 8, encoder.sample_lengths), cpu)
        out[r::n], out_labels[r::n] = f, y
    assert torch.equal(out_labels, labels)
    assert (out - ref).abs().max() <= FEATURE_RTOL * ref.abs().max()


def test_bucket_order_keeps_every_sample_and_groups_lengths():
    rng = random.Random(2)
    lengths = [rng.randint(1, 30) for _ in range(250)]
    order = torch.randperm(250, generator=torch.Generator().manual_seed(0)).tolist()
    out = bucket_order(order, lengths, batch=8, window=4, generator=torch.Generator().manual_seed(1))
    assert sorted(out) == list(range(250))
    for start in range(0, 250, 32):  # a window's samples stay in the window
        assert sorted(out[start:start + 32]) == sorted(order[start:start + 32])

    def padding(o: list[int]) -> int:
        return sum(8 * max(lengths[i] for i in o[k:k + 8]) - sum(lengths[i] for i in o[k:k + 8])
                   for k in range(0, len(o), 8))

    assert padding(out) < padding(order) / 2
    again = bucket_order(order, lengths, batch=8, window=4, generator=torch.Generator().manual_seed(1))
    assert again == out  # seeded: a resumed epoch gets the same batches


def test_options_are_validated():
    from engine_helpers import tiny
    from sdlora.config import load_config
    from sdlora.typed import ConfigError

    with pytest.raises(ConfigError, match="length_buckets"):
        load_config(data=tiny(train={"length_buckets": -1}))
    with pytest.raises(ConfigError, match="eval_every"):
        load_config(data=tiny(eval_every=-2))
    with pytest.raises(ConfigError, match="length_aware_passes"):
        load_config(data=tiny(train={"length_aware_passes": "maybe"}))
    cfg = load_config(data=tiny())
    assert cfg.train.length_aware_passes is True and cfg.train.length_buckets == 0 and cfg.eval_every == 1


CLINC = Path(os.environ.get("SDLORA_DATA", "/nonexistent")) / "clinc150" / "data_full.json"


@pytest.mark.skipif(not CLINC.is_file(), reason="CLINC150 not under $SDLORA_DATA")
def test_minilm_features_agree_on_clinc_texts():
    """The real encoder on 512 CLINC150 test queries, batches of 256 as in the main job."""
    import json

    try:
        minilm = HFEncoder(resolve_options(HFEncoder.Options, {"max_length": 32}, "backbone.options")).eval()
    except OSError as err:
        pytest.skip(f"MiniLM not available: {err}")
    rows = json.loads(CLINC.read_text())["test"][::9][:512]
    data = [(text, i % 7) for i, (text, _) in enumerate(rows)]
    cpu = torch.device("cpu")
    plain = pass_loader(data, minilm.collate, 256)
    sorted_ = pass_loader(data, minilm.collate, 256, minilm.sample_lengths)
    f_plain, y_plain = collect_features(minilm, plain, cpu)
    f_sorted, y_sorted = collect_features(minilm, sorted_, cpu)
    assert torch.equal(y_sorted, y_plain)
    assert (f_sorted - f_plain).abs().max() <= FEATURE_RTOL * f_plain.abs().max()
    processed_plain, real = token_counts(plain)
    processed_sorted, _ = token_counts(sorted_)
    assert processed_sorted / real <= 1 / (1 - MAX_PADDING) < processed_plain / real


def text_run(tmp_path: Path, **train) -> dict:
    """SD-LoRA with prototypes, SDC and class-mean head init on a tiny BERT over texts of 1 to 12 words."""
    from engine_helpers import tiny

    phrases = ["alarm clock", "pay my bill", "weather in paris", "play some jazz"]
    rows = ["text,label"] + [f"{' '.join([p] * (1 + (i * 5) % 6))} {i},{c}" for c, p in enumerate(phrases)
                             for i in range(10)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "test.csv").write_text("\n".join(rows[:1] + rows[1::2]) + "\n")
    return tiny(benchmark={"name": "text_files", "data_root": str(tmp_path), "init_classes": 2, "increment": 2,
                           "options": {"train_file": "train.csv", "test_file": "test.csv"}},
                backbone={"name": "hf_encoder", "options": {"random_init_config": TINY_BERT, "max_length": 16}},
                method={"name": "sdlora", "options": {"rank": 2}, "classifier": {
                    "kind": "prototypes", "drift": "sdc", "head_init": "class_mean"}},
                train={"epochs": 2, "batch_size": 4, "eval_batch_size": 8, "lr": 0.05, **train})


@pytest.mark.parametrize("train", [{}, {"length_buckets": 2}], ids=["passes", "buckets"])
def test_text_run_with_length_order_resumes_to_the_same_results(tmp_path, train):
    from engine_helpers import check_resume_equals_uninterrupted

    result = check_resume_equals_uninterrupted(tmp_path, text_run(tmp_path, **train))
    assert result["config"]["train"]["length_aware_passes"] is True
    assert result["config"]["train"]["length_buckets"] == train.get("length_buckets", 0)


def test_text_run_with_length_aware_passes_matches_dataset_order_passes(tmp_path):
    """The same run with the passes in dataset order: the same accuracies, prototypes within float rounding."""
    import io

    from sdlora.config import load_config
    from sdlora.engine.runner import run_config
    from test_distributed import final_state

    for name, aware in (("sorted", True), ("plain", False)):
        data = text_run(tmp_path, length_aware_passes=aware)
        run_config(load_config(data=data), tmp_path / name, quiet=True, stream=io.StringIO())
    (r1, t1), (r2, t2) = final_state(tmp_path / "sorted"), final_state(tmp_path / "plain")
    assert r1["accuracy_matrix"] == r2["accuracy_matrix"]
    for key in t1:
        assert (t1[key] - t2[key]).abs().max() <= 1e-4 * max(float(t2[key].abs().max()), 1.0), key


def test_worker_processes_give_the_same_run(tmp_path):
    """`train.num_workers: 2`: collate (tokenisation) in worker processes for the epochs and the length-aware passes,
    overlapping the forward; the run is the one of `num_workers: 0`, to the bit (the same batches, in order)."""
    import io

    from sdlora.config import load_config
    from sdlora.engine.runner import run_config
    from test_distributed import final_state

    for workers in (0, 2):
        data = text_run(tmp_path, num_workers=workers, length_buckets=2)
        run_config(load_config(data=data), tmp_path / f"w{workers}", quiet=True, stream=io.StringIO())
    (r0, t0), (r2, t2) = final_state(tmp_path / "w0"), final_state(tmp_path / "w2")
    assert r2["config"]["train"]["num_workers"] == 2
    assert r0["accuracy_matrix"] == r2["accuracy_matrix"]
    assert t0.keys() == t2.keys() and all(torch.equal(t0[k], t2[k]) for k in t0)


def test_length_buckets_pad_training_batches_less_and_keep_every_sample(tmp_path):
    """`train.length_buckets`: the trainer's epoch loader holds the same samples, in batches that pad less."""
    from sdlora.config import load_config
    from sdlora.engine import build
    from sdlora.engine.trainer import Trainer

    loaders = {}
    for buckets in (0, 3):
        cfg = load_config(data=text_run(tmp_path, length_buckets=buckets))
        trainer = Trainer(cfg, 3, tmp_path / f"b{buckets}", torch.device("cpu"), build.build_benchmark(cfg), quiet=True)
        loaders[buckets] = trainer._loader(trainer.scenario.train_set(0), shuffle=True, task=0, epoch=1)
    assert sorted(loaders[0].sampler.indices) == sorted(loaders[3].sampler.indices)
    assert token_counts(loaders[3])[0] < token_counts(loaders[0])[0]

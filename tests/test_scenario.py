import numpy as np
import pytest
import torch

from sdlora.data.base import BenchmarkData, ListDataset
from sdlora.data.scenario import Scenario, make_class_order, split_tasks


def test_permutation_matches_pilot_seeding():
    np.random.seed(1993)
    expected = np.random.permutation(10).tolist()
    assert make_class_order("permutation", 10, 1993) == expected
    assert make_class_order("permutation", 10, 1993) != make_class_order("permutation", 10, 1994)
    assert make_class_order("sorted", 4, 0) == [0, 1, 2, 3]
    assert make_class_order([2, 0, 1], 3, 0) == [2, 0, 1]
    assert make_class_order("domain", 3, 0, {"domain": [1, 2, 0]}) == [1, 2, 0]


def test_bad_orders_are_named():
    with pytest.raises(ValueError, match="permutation of 0..2"):
        make_class_order([0, 0, 1], 3, 0)
    with pytest.raises(ValueError, match="unknown order 'domain'"):
        make_class_order("domain", 3, 0)


def test_split_with_remainder_and_cap():
    assert split_tasks(10, None, 3) == [3, 3, 3, 1]
    assert split_tasks(10, 4, 2) == [4, 2, 2, 2]
    assert split_tasks(200, 40, 40) == [40] * 5
    assert split_tasks(10, 4, 2, num_tasks=2) == [4, 2]
    with pytest.raises(ValueError, match="exceeds"):
        split_tasks(5, 6, 1)
    with pytest.raises(ValueError, match="positive"):
        split_tasks(5, None, 0)


def _data(num_classes=6, per_class=3):
    labels = np.repeat(np.arange(num_classes), per_class)
    xs = [torch.tensor([float(i)]) for i in range(len(labels))]
    return BenchmarkData(ListDataset(xs, labels), labels, ListDataset(xs, labels), labels,
                         [f"c{i}" for i in range(num_classes)])


def test_scenario_remaps_labels_to_order_positions():
    s = Scenario(_data(), [5, 4, 3, 2, 1, 0], init_classes=2, increment=2, seed=0)
    assert s.num_tasks == 3
    assert [(t.known, t.total) for t in map(s.task, range(3))] == [(0, 2), (2, 4), (4, 6)]
    first = s.train_set(0)
    # task 0 holds original classes 5 and 4, remapped to 0 and 1
    assert sorted(set(first.targets.tolist())) == [0, 1]
    assert len(first) == 6
    x, y = first[0]
    assert first.base.labels[int(x.item())] == 5 - y
    assert len(s.eval_set(1)) == 12 and len(s.eval_set(2)) == 18
    assert s.task_of_label(np.array([0, 1, 2, 5])).tolist() == [0, 0, 1, 2]
    assert s.class_names(2) == ["c5", "c4"]

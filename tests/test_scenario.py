import numpy as np
import pytest
import torch

from sdlora.data.base import BenchmarkData, ListDataset
from sdlora.data.scenario import Scenario, check_same_classes, make_class_order, split_tasks


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
    assert split_tasks(10, 4, 2, num_tasks=4) == [4, 2, 2, 2]
    with pytest.raises(ValueError, match=r"num_tasks=5, but 10 classes .* make 4 tasks; set num_tasks <= 4"):
        split_tasks(10, 4, 2, num_tasks=5)  # a cap that caps nothing is a mistake, not a full run


@pytest.mark.parametrize("bad", [-1, 6])
def test_labels_outside_the_classes_are_refused(bad):
    data = _data()
    data.test_targets = data.test_targets.copy()
    data.test_targets[2] = bad  # -1 would read label_map[-1]: the last class
    with pytest.raises(ValueError, match=rf"test labels must lie in 0..5; found \[{bad}\]"):
        Scenario(data, "sorted", init_classes=2, increment=2, seed=0)


def test_check_same_classes_names_what_moved():
    check_same_classes(["a", "b"], ["a", "b", "c"], "eval")  # more classes after the trained ones: fine
    with pytest.raises(ValueError, match=r"eval: .*\(label: trained -> now: 0: 'a' -> '0'; 1: 'b' -> 'a'\)"):
        check_same_classes(["a", "b"], ["0", "a", "b"], "eval")
    with pytest.raises(ValueError, match="1 class\\(es\\) gone"):
        check_same_classes(["a", "b"], ["a"], "eval")


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


def test_check_samples_refuses_before_training_what_would_stop_a_run_later():
    Scenario(_data(), "sorted", init_classes=2, increment=2, seed=0).check_samples("test")
    data = _data()
    with pytest.raises(ValueError, match="eval_split: 'val', but this benchmark has no 'val' split"):
        Scenario(data, "sorted", init_classes=2, increment=2, seed=0).check_samples("val")
    keep = data.test_targets < 4  # classes 4 and 5 (task 3) have no test samples
    data.test, data.test_targets = ListDataset([], []), data.test_targets[keep]
    with pytest.raises(ValueError, match=r"task 3 has no test samples \(its classes \['c4', 'c5'\]\)"):
        Scenario(data, "sorted", init_classes=2, increment=2, seed=0).check_samples("test")
    Scenario(data, "sorted", init_classes=2, increment=2, seed=0, num_tasks=2).check_samples("test")  # cut before
    data = _data()
    data.train_targets = data.train_targets[data.train_targets != 3]  # an empty class folder
    with pytest.raises(ValueError, match=r"1 class\(es\) have no training samples: \['c3'\]"):
        Scenario(data, "sorted", init_classes=2, increment=2, seed=0).check_samples("test")

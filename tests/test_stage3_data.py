import numpy as np

from pipeline.stage3.data import split_off_validation


def test_validation_never_holds_a_copy_of_a_training_image():
    labels = np.repeat([0, 1], 30)
    groups = np.arange(60) // 3  # each photo with two augmented copies
    paths = [f"/img/{i}.png" for i in range(60)]
    (train_paths, _), (val_paths, val_labels) = split_off_validation(
        paths, labels, 0.2, seed=0, groups=groups)
    group_of = dict(zip(paths, groups, strict=True))
    assert {group_of[p] for p in train_paths}.isdisjoint(group_of[p] for p in val_paths)
    assert set(val_labels) == {0, 1} and len(val_paths) == 12

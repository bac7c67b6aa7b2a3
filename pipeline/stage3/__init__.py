"""Stage 3: fine-tune a pretrained backbone, or train a small CNN from scratch, on the same split.

Both read the images, labels and split that stage 1 recorded in a feature store
(or split a dataset folder the same way), so every stage is judged on the very
same test images, and both write a test report in the stage 2 format.

Modules, one trade each:

``data``
    The split images and the Keras ``PyDataset`` that decodes their batches.
``models``
    The fine-tuning network (backbone + new head), MiniVGGNet, freezing helpers.
``training``
    The resumable epoch loop and its atomic, generation-based checkpoints.
``history``
    ``history.csv`` and ``curves.png``.
``inference``
    Loading a saved ``.keras`` model (checked against its sidecar) to classify images.
``commands``
    :func:`finetune` and :func:`train_from_scratch`, each taking its settings
    (:class:`FinetuneSettings`, :class:`ScratchSettings`).
"""

from pipeline.stage3.commands import (
    FinetuneSettings,
    ScratchSettings,
    StageThreeResult,
    TrainingSettings,
    finetune,
    run_key,
    train_from_scratch,
)
from pipeline.stage3.data import (
    SplitImages,
    image_batches_class,
    images_from_folder,
    images_from_store,
    load_split_images,
    split_off_validation,
)
from pipeline.stage3.history import write_history
from pipeline.stage3.inference import KerasImageClassifier, keras_versions, load_keras_classifier
from pipeline.stage3.models import (
    HeadConfig,
    base_of,
    build_finetune_model,
    build_minivggnet,
    find_unfreeze_index,
    freeze_base,
    scale_to_unit,
    unfreeze_base_from,
    without_augmentation,
)
from pipeline.stage3.training import Phase, TrainingState, checkpointed_settings_key, train_phases

__all__ = [
    "FinetuneSettings",
    "HeadConfig",
    "KerasImageClassifier",
    "Phase",
    "ScratchSettings",
    "SplitImages",
    "StageThreeResult",
    "TrainingSettings",
    "TrainingState",
    "base_of",
    "build_finetune_model",
    "build_minivggnet",
    "checkpointed_settings_key",
    "find_unfreeze_index",
    "finetune",
    "freeze_base",
    "image_batches_class",
    "images_from_folder",
    "images_from_store",
    "keras_versions",
    "load_keras_classifier",
    "load_split_images",
    "run_key",
    "scale_to_unit",
    "split_off_validation",
    "train_from_scratch",
    "train_phases",
    "unfreeze_base_from",
    "without_augmentation",
    "write_history",
]

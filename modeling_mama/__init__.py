"""MaMA: multi-view, multi-scale vision-language pre-training for mammography, as a transformers model.

Importing the package registers MaMA with the Auto classes (`AutoConfig`, `AutoModel`,
`AutoModelForZeroShotImageClassification`, `AutoModelForImageClassification`, `AutoImageProcessor`,
`AutoProcessor`) and the `"mammography-zero-shot"` pipeline. Training, data and evaluation names load
on first use.
"""

import importlib

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

from .configuration_mama import MamaConfig
from .image_processing_mama import MamaImageProcessor
from .modeling_mama import MamaForImageClassification, MamaModel, MamaOutput, MamaPreTrainedModel
from .pipelines import MammographyZeroShotPipeline
from .processing_mama import MamaProcessor

__version__ = "0.1.0"

AutoConfig.register("mama", MamaConfig, exist_ok=True)
AutoModel.register(MamaConfig, MamaModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(MamaConfig, MamaModel, exist_ok=True)
AutoModelForImageClassification.register(MamaConfig, MamaForImageClassification, exist_ok=True)
AutoImageProcessor.register(
    MamaConfig, image_processor_classes={"torchvision": MamaImageProcessor, "pil": MamaImageProcessor}, exist_ok=True
)
AutoProcessor.register(MamaConfig, MamaProcessor, exist_ok=True)
# Saved folders carry this code (auto_map), so they load with trust_remote_code=True where the
# package is not installed.
MamaConfig.register_for_auto_class()
MamaModel.register_for_auto_class("AutoModel")
MamaImageProcessor.register_for_auto_class("AutoImageProcessor")
MamaProcessor.register_for_auto_class("AutoProcessor")

_LAZY = {
    "MamaTrainer": "trainer_mama",
    "MamaTrainingArguments": "trainer_mama",
    "MamaDataCollator": "trainer_mama",
    "MultiViewDataset": "multiview",
    "ExamIndex": "multiview",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MamaConfig",
    "MamaForImageClassification",
    "MamaImageProcessor",
    "MamaModel",
    "MamaOutput",
    "MamaPreTrainedModel",
    "MamaProcessor",
    "MammographyZeroShotPipeline",
    *_LAZY,
]

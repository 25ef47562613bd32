"""MaMA: multi-view, multi-scale vision-language pre-training for mammography, as a transformers model.

Importing the package registers MaMA with the Auto classes (`AutoConfig`, `AutoModel`,
`AutoModelForZeroShotImageClassification`, `AutoModelForImageClassification`, `AutoImageProcessor`,
`AutoProcessor`) and the `"mammography-zero-shot"` pipeline. Training, data and evaluation names load
on first use.

The package has three rooms: this top level holds what a saved model folder needs (config, model,
losses, DICOM reading, image processing, reports, tokenization, processor, pipeline, Hub helpers);
`modeling_mama.training` holds training and evaluation; `modeling_mama.data` the dataset converters
and the synthetic generator. Imports only point inwards: `data` and `training` import the top level,
never the reverse.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

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

# Training names, kept reachable from the top level; they live in `modeling_mama.training`.
_LAZY = {
    "MamaTrainer": "training.trainer",
    "MamaTrainingArguments": "training.trainer",
    "MamaDataCollator": "training.collator",
    "MultiViewDataset": "training.multiview",
    "ExamIndex": "training.multiview",
}
# Modules that moved out of the top level (issue 12): importing the old path still works, with a
# DeprecationWarning, until 0.3.
_MOVED_MODULES = {
    "trainer_mama": "training.trainer",
    "multiview": "training.multiview",
    "finetuning": "training.finetuning",
    "zero_shot": "training.zero_shot",
    "metrics": "training.metrics",
    "visualization": "training.visualization",
    "synthetic": "data.synthetic",
    "converters": "data.converters",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _MOVED_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves `modeling_mama.<old name>[.sub]` to the module's new home, with a DeprecationWarning."""

    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split(".")
        if len(parts) < 2 or parts[0] != __name__ or parts[1] not in _MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        parts = spec.name.split(".")
        new_name = ".".join([__name__, _MOVED_MODULES[parts[1]], *parts[2:]])
        warnings.warn(f"{spec.name} moved to {new_name}; the old path will be removed in modeling_mama 0.3.",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(new_name)

    def exec_module(self, module):
        pass


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModuleFinder())  # before the path finder, which would load a second copy


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

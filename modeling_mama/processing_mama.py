"""`MamaProcessor`: mammograms and reports -> every input `MamaModel` takes (DESIGN.md "Model inputs").

It pairs a `MamaImageProcessor` with a tokenizer (BioMedLM's for the paper preset, a small BPE from
`tokenization.train_report_tokenizer` offline) and adds what the local alignment needs: the index of
each sentence's separator token (`sentence_positions`) and which sentences are real (`sentence_mask`).

It is the one door from raw inputs to model inputs: the training collator, the zero-shot evaluation,
the mammography pipeline and the heat maps all call it.

Texts and images are independent, as in `CLIPProcessor`: `processor(text=["extremely dense",
"fatty"], images=image)` gives one image and two prompts, and the model scores every image against
every text (`logits_per_image` [1, 2]). Paired training items, one report per image, use
`reports=` instead, and the processor checks that the counts match.

- `reports=`: one report per image, as `ReportFields` or mappings (rows of a converted dataset by
  default; see `report_columns`), turned into sentences by `reports.build_report` (optionally with
  metadata masking; sentence boundaries come from the template), or as sentence lists
  (`[["Procedure reported: ...", "Overall Assessment: Negative."], ...]`, what `MultiViewDataset`
  items carry).
- `text=`: prompts or reports independent of the images: sentence lists, one report's sentences with
  `is_split_into_sentences=True`, or running text (a string, or a list of strings, one report each)
  split into sentences at ". " boundaries (`tokenization.split_sentences`), so a period followed by a
  space inside a value would split it: give sentence lists when you have them.

Every report is tokenised with one separator token per sentence, and `sentence_positions` (the
separators' indices) is the one source of sentence positions for the local alignment.
Zero-shot class prompts need no images: `processor(text=reports.zero_shot_prompts("density"))`.

The token budget `max_length` is saved with the processor (`save_pretrained`), so a model trained
with a longer budget is evaluated with it.

>>> import numpy as np
>>> from modeling_mama.image_processing_mama import MamaImageProcessor
>>> from modeling_mama.reports import ReportFields, build_report
>>> from modeling_mama.tokenization import train_report_tokenizer
>>> fields = [ReportFields(birads=1), ReportFields(density=3)]
>>> tokenizer = train_report_tokenizer([s for f in fields for s in build_report(f)] * 10, vocab_size=400)
>>> processor = MamaProcessor(MamaImageProcessor(size=28), tokenizer)
>>> image = np.zeros((60, 40), dtype=np.uint16)
>>> image[5:55, :30] = 30000
>>> inputs = processor(images=[image, image], reports=fields)
>>> tuple(inputs["pixel_values"].shape), inputs["sentence_mask"].sum(dim=1).tolist()
((2, 3, 28, 28), [7, 6])
>>> clip_style = processor(text=["The breast is extremely dense.", "The breast is almost entirely fat."], images=image)
>>> tuple(clip_style["pixel_values"].shape), tuple(clip_style["input_ids"].shape)[0]
((1, 3, 28, 28), 2)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .hub import ReleaseGuardMixin, normalize_datasets
from .reports import DATASET_COLUMNS, ReportFields, build_report
from .tokenization import DEFAULT_MAX_LENGTH, TRUNCATION_MODES, batch_tokenize_reports, split_sentences

TEXT_INPUT_NAMES = ["input_ids", "attention_mask", "sentence_positions", "sentence_mask"]
TILE_INPUT_NAMES = ["tile_pixel_values", "tile_mask"]
PADDING_MODES = (True, "longest", "max_length")


class MamaProcessor(ReleaseGuardMixin, ProcessorMixin):
    r"""
    Image processor + tokenizer for MaMA.

    Args:
        image_processor: a `MamaImageProcessor`.
        tokenizer: a tokenizer with bos, eos, pad and sentence-separator tokens
            (`tokenization.add_special_tokens` adds them).
        max_length: the token budget of a report (paper: 144; the RSNA prompts: 72), saved with the
            processor. A longer report raises unless called with `truncation="warn"`.
        training_datasets: the data the tokenizer (and the model it ships with) was trained on, saved
            with the processor; `push_to_hub` / `save_pretrained(push_to_hub=True)` check its licences
            (`hub.ReleaseGuardMixin`), which also guards the tokenizer files the processor uploads.
    """

    def __init__(self, image_processor=None, tokenizer=None, max_length: int = DEFAULT_MAX_LENGTH,
                 training_datasets=None, **kwargs):
        if image_processor is None or tokenizer is None:
            raise ValueError("MamaProcessor needs both an image_processor (MamaImageProcessor) and a tokenizer.")
        super().__init__(image_processor, tokenizer, **kwargs)
        if isinstance(max_length, bool) or int(max_length) != max_length or max_length < 4:
            raise ValueError(f"max_length must be a whole number of tokens >= 4, got {max_length!r}.")
        self.max_length = int(max_length)
        self.training_datasets = normalize_datasets(training_datasets)

    def __call__(
        self,
        images=None,
        text: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
        *,
        reports: ReportFields | Mapping | Sequence[ReportFields | Mapping] | None = None,
        is_split_into_sentences: bool = False,
        report_columns: Mapping[str, Any] | None = None,
        mask_prob: float = 0.0,
        generator=None,
        max_length: int | None = None,
        truncation: str = "error",
        padding: bool | str = True,
        pad_to_multiple_of: int | None = None,
        return_tensors: str | None = "pt",
        **image_kwargs,
    ) -> BatchFeature:
        """Process images and / or texts (give `text` or `reports`, not both).

        Args:
            images: anything `MamaImageProcessor` takes (DICOM paths, pydicom datasets, arrays, PIL
                images; one or a list). `image_kwargs` (e.g. `laterality=`, `augment=`, `mode=`,
                `do_orient=`) go to it.
            text: texts independent of the images (prompts, CLIP-style): a string, a list of strings,
                or a list of sentence lists (see the module docstring).
            reports: one report per image: `ReportFields`, mappings or sentence lists, one or a list.
            is_split_into_sentences: `text` is ONE report given as its list of sentences.
            report_columns: how mappings in `reports` are read (`reports.ReportFields.from_mapping`);
                default `reports.DATASET_COLUMNS`, the converted datasets' columns.
            mask_prob, generator: metadata masking of `reports` (training; see `reports.build_report`).
            max_length: token budget (default: `self.max_length`).
            truncation: "error" (default) raises on a report longer than `max_length`; "warn" drops
                its last whole sentences and warns (never cuts mid-sentence).
            padding: True / "longest" pads to the longest report, "max_length" to `max_length`.
            pad_to_multiple_of: round the padded length up to a multiple of this.
            return_tensors: "pt" (default) or "np".

        Returns:
            `pixel_values` (plus the tile outputs in tiles mode) when images are given; `input_ids`,
            `attention_mask`, `sentence_positions`, `sentence_mask` when text or reports are given.
        """
        if images is None and text is None and reports is None:
            raise ValueError("MamaProcessor needs images, text or reports.")
        if text is not None and reports is not None:
            raise ValueError("Give either text= or reports=, not both.")
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}.")
        if padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}.")
        if truncation not in TRUNCATION_MODES:
            raise ValueError(f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}.")

        if images is None and image_kwargs:
            raise TypeError(f"Unexpected argument(s) {sorted(image_kwargs)} (image options need images).")

        # The reports first: they are cheap, and a bad one should fail before any image is decoded.
        sentence_lists = None
        if text is not None:
            sentence_lists = self._reports_from_text(text, is_split_into_sentences)
        elif reports is not None:
            sentence_lists = self.build_reports(reports, report_columns=report_columns, mask_prob=mask_prob,
                                                generator=generator)
        data: dict[str, Any] = {}
        if images is not None:
            data.update(self.image_processor(images, return_tensors="pt", **image_kwargs))
        if sentence_lists is not None:
            if reports is not None and images is not None and len(sentence_lists) != len(data["pixel_values"]):
                raise ValueError(f"Got {len(data['pixel_values'])} images but {len(sentence_lists)} reports; "
                                 f"reports= pairs one report with each image (use text= for prompts that "
                                 f"every image is scored against).")
            max_length = self.max_length if max_length is None else int(max_length)
            if padding == "max_length":
                pad_to_multiple_of = max_length  # every report fits in max_length, so this pads to it exactly
            data.update(batch_tokenize_reports(sentence_lists, self.tokenizer, max_length=max_length,
                                               pad_to_multiple_of=pad_to_multiple_of, truncation=truncation))
        if return_tensors == "np":
            data = {key: value.numpy() if hasattr(value, "numpy") else np.asarray(value) for key, value in data.items()}
        return BatchFeature(data=data)

    def build_reports(self, reports, *, report_columns: Mapping[str, Any] | None = None, mask_prob: float = 0.0,
                      generator=None) -> list[list[str]]:
        """The sentence lists of `reports` (`ReportFields`, mappings or sentence lists; one or a list).
        Sentence lists are taken as they are (masking applies to fields only)."""
        if isinstance(reports, (ReportFields, Mapping)):
            reports = [reports]
        if isinstance(reports, str) or not isinstance(reports, Sequence) or not reports:
            raise TypeError("reports= takes ReportFields, mappings or sentence lists (one, or a non-empty list); "
                            "for running text use text=.")
        if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
            generator = np.random.default_rng(int(generator))  # one stream for the batch, not one seed per report
        columns = DATASET_COLUMNS if report_columns is None else report_columns
        sentence_lists = []
        for index, report in enumerate(reports):
            if _is_sentence_list(report):
                sentence_lists.append(list(report))
                continue
            if isinstance(report, Mapping):
                report = ReportFields.from_mapping(report, columns)
            elif not isinstance(report, ReportFields):
                raise TypeError(f"reports[{index}] is a {type(report).__name__}; expected ReportFields, a mapping "
                                f"or a list of sentences.")
            sentence_lists.append(build_report(report, mask_prob=mask_prob, generator=generator))
        return sentence_lists

    @staticmethod
    def _reports_from_text(text, is_split_into_sentences: bool) -> list[list[str]]:
        if isinstance(text, str):
            return [split_sentences(text)]
        if not isinstance(text, Sequence) or not text:
            raise TypeError("text= takes a string, a list of strings or a list of sentence lists (non-empty).")
        if is_split_into_sentences:
            if not all(isinstance(sentence, str) for sentence in text):
                raise TypeError("With is_split_into_sentences=True, text is one report: a list of sentence strings.")
            return [list(text)]
        sentence_lists = []
        for index, report in enumerate(text):
            if isinstance(report, str):
                sentence_lists.append(split_sentences(report))
            elif _is_sentence_list(report):
                sentence_lists.append(list(report))
            else:
                raise TypeError(f"text[{index}] is a {type(report).__name__}; "
                                f"expected a string or a list of sentences.")
        return sentence_lists

    @classmethod
    def from_args_and_dict(cls, args, processor_dict: dict[str, Any], **kwargs):
        # ProcessorMixin drops the saved `auto_map` (the image processor keeps its own): keep it, so a
        # loaded processor's `to_dict()` equals the saved one's.
        loaded = super().from_args_and_dict(args, processor_dict, **kwargs)
        processor = loaded[0] if isinstance(loaded, tuple) else loaded
        if "auto_map" in processor_dict:
            processor.auto_map = processor_dict["auto_map"]
        return loaded

    @property
    def model_input_names(self) -> list[str]:
        """What `MamaModel.forward` takes from this processor: the image inputs (with the tile inputs in
        tiles mode) and the text inputs."""
        names = list(self.image_processor.model_input_names)
        if getattr(self.image_processor, "mode", "global") == "tiles":
            names += TILE_INPUT_NAMES
        return names + TEXT_INPUT_NAMES


def _is_sentence_list(value) -> bool:
    return (isinstance(value, Sequence) and not isinstance(value, str)
            and all(isinstance(sentence, str) for sentence in value))


__all__ = ["MamaProcessor", "TEXT_INPUT_NAMES", "TILE_INPUT_NAMES"]

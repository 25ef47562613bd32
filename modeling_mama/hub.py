"""Sharing MaMA models: dataset licences, the release guard, and the model card (METHOD.md section 8).

Licence facts are data, not code: `DATASET_TERMS` says, per training dataset, what its terms allow
and what attribution they ask for. A model records the datasets it was trained on in
`config.training_datasets` (the training scripts read them from the data: a converted dataset's
`conversion.json`, see `recorded_datasets`); names are normalised to `DATASET_TERMS` keys
(`dataset_key`: "Emory EMBED", "embed-open-data" and "EMBED_v2" are all `embed`), names it does not
know are kept as given and shown as "terms not recorded".

Every upload path checks those records before anything reaches the Hub (`check_release_allowed`):
weights trained on EMBED (its data use agreement forbids releasing weights or embeddings without
written permission from Emory; the MaMA authors withdrew their checkpoint for this reason) or on a
hospital's own images (`dicom_folder`) are refused unless the caller acknowledges holding that
permission. CC BY data (CBIS-DDSM, CMMD) may be shared: the card then carries the attribution and
citations the licence asks for.

>>> check_release_allowed(["synthetic", "CBIS-DDSM"])
>>> dataset_key("Emory EMBED"), dataset_key("cbis_ddsm"), dataset_key("my-data")
('embed', 'cbis_ddsm', 'my-data')
>>> check_release_allowed("EMBED")
Traceback (most recent call last):
...
modeling_mama.hub.DatasetLicenseError: ...
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .file_utils_mama import write_text_atomic

logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).with_name("model_card.md")
CONVERSION_FILE = "conversion.json"
"""What a converter writes next to its dataset (`dataset`: the licence key of the data it holds)."""

_TCIA_CITATION = (
    "@article{clark2013tcia,\n"
    "  title   = {The Cancer Imaging Archive (TCIA): Maintaining and Operating a Public Information Repository},\n"
    "  author  = {Clark, Kenneth and Vendt, Bruce and Smith, Kirk and Freymann, John and Kirby, Justin and "
    "Koppel, Paul and Moore, Stephen and Phillips, Stanley and Maffitt, David and Pringle, Michael and "
    "Tarbox, Lawrence and Prior, Fred},\n"
    "  journal = {Journal of Digital Imaging},\n  volume  = {26},\n  number  = {6},\n  pages   = {1045--1057},\n"
    "  year    = {2013},\n  doi     = {10.1007/s10278-013-9622-7}\n}"
)

# One entry per training dataset, keyed as `DatasetConverter.name` (what conversion.json records).
# `forbids_weight_release`: the guard refuses pushes without acknowledge_data_license=True.
# `attribution` / `citations`: what the licence asks a shared model to carry (written into the card).
DATASET_TERMS: dict[str, dict[str, Any]] = {
    "embed": {
        "name": "EMBED (Emory Breast Imaging Dataset)",
        "terms": "Emory data use agreement; releasing weights or embeddings trained on EMBED requires written "
                 "permission from Emory.",
        "forbids_weight_release": True,
        "license": "other",
        "pattern": r"embed",
    },
    "dicom_folder": {
        "name": "A hospital's own DICOM images (data_scripts/dicom_folder.py)",
        "terms": "the data owner's; releasing weights trained on patient images needs the data owner's written "
                 "permission (and usually the ethics board's).",
        "forbids_weight_release": True,
        "license": "other",
        "pattern": r"dicom[ _-]?folder|hospital",
    },
    "cbis_ddsm": {
        "name": "CBIS-DDSM (Curated Breast Imaging Subset of DDSM, The Cancer Imaging Archive)",
        "terms": "Creative Commons Attribution 3.0 (CC BY 3.0); TCIA asks users to cite the data, its paper "
                 "and TCIA.",
        "forbids_weight_release": False,
        "license": "cc-by-3.0",
        "pattern": r"cbis",
        "attribution": (
            "Trained on data from CBIS-DDSM (Sawyer-Lee, Gimenez, Hoogi, Rubin; The Cancer Imaging Archive, "
            "https://doi.org/10.7937/K9/TCIA.2016.7O02S9CY), licensed under CC BY 3.0 "
            "(https://creativecommons.org/licenses/by/3.0/). The images were converted (breast crop, "
            "orientation, resizing) to train this model."),
        "citations": [
            "@misc{cbisddsm2016data,\n"
            "  title     = {Curated Breast Imaging Subset of DDSM (CBIS-DDSM) [Data set]},\n"
            "  author    = {Sawyer-Lee, Rebecca and Gimenez, Francisco and Hoogi, Assaf and Rubin, Daniel},\n"
            "  publisher = {The Cancer Imaging Archive},\n  year      = {2016},\n"
            "  doi       = {10.7937/K9/TCIA.2016.7O02S9CY}\n}",
            "@article{lee2017cbisddsm,\n"
            "  title   = {A curated mammography data set for use in computer-aided detection and diagnosis research},\n"
            "  author  = {Lee, Rebecca Sawyer and Gimenez, Francisco and Hoogi, Assaf and Miyake, Kanae Kawai and "
            "Gorovoy, Mia and Rubin, Daniel L.},\n"
            "  journal = {Scientific Data},\n  volume  = {4},\n  pages   = {170177},\n  year    = {2017},\n"
            "  doi     = {10.1038/sdata.2017.177}\n}",
            _TCIA_CITATION,
        ],
    },
    "cmmd": {
        "name": "CMMD (The Chinese Mammography Database, The Cancer Imaging Archive)",
        "terms": "Creative Commons Attribution 4.0 (CC BY 4.0); TCIA asks users to cite the data, its paper "
                 "and TCIA.",
        "forbids_weight_release": False,
        "license": "cc-by-4.0",
        "pattern": r"cmmd|chinese[ _-]?mammography",
        "attribution": (
            "Trained on data from CMMD, the Chinese Mammography Database (Cui, Li, Cai, Fan, Zhang, Dan, Li, "
            "Wang; The Cancer Imaging Archive, https://doi.org/10.7937/tcia.eqde-4b16), licensed under "
            "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/). The images were converted (breast "
            "crop, orientation, resizing) to train this model."),
        "citations": [
            "@misc{cmmd2021data,\n"
            "  title     = {The Chinese Mammography Database (CMMD): An online mammography database with biopsy "
            "confirmed types for machine diagnosis of breast [Data set]},\n"
            "  author    = {Cui, Chunyan and Li, Li and Cai, Hongmin and Fan, Zhihao and Zhang, Ling and "
            "Dan, Tingting and Li, Jiao and Wang, Jinghua},\n"
            "  publisher = {The Cancer Imaging Archive},\n  year      = {2021},\n"
            "  doi       = {10.7937/tcia.eqde-4b16}\n}",
            "@article{cai2023cmmd,\n"
            "  title   = {An Online Mammography Database with Biopsy Confirmed Types},\n"
            "  author  = {Cai, Hongmin and Wang, Jinghua and Dan, Tingting and Li, Jiao and Fan, Zhihao and "
            "Yi, Weiting and Cui, Chunyan and Jiang, Xinhua and Li, Li},\n"
            "  journal = {Scientific Data},\n  volume  = {10},\n  pages   = {123},\n  year    = {2023},\n"
            "  doi     = {10.1038/s41597-023-02025-1}\n}",
            _TCIA_CITATION,
        ],
    },
    "rsna": {
        "name": "RSNA Screening Mammography Breast Cancer Detection",
        "terms": "competition data, non-commercial use.",
        "forbids_weight_release": False,
        "license": "other",
        "pattern": r"rsna",
    },
    "vindr": {
        "name": "VinDr-Mammo",
        "terms": "PhysioNet credentialed access; check its licence before sharing derived models.",
        "forbids_weight_release": False,
        "license": "other",
        "pattern": r"vindr",
    },
    "synthetic": {
        "name": "Synthetic mammography (modeling_mama.data.synthetic)",
        "terms": "generated by this package; no restriction.",
        "forbids_weight_release": False,
        "license": "apache-2.0",
        "pattern": r"synthetic",
    },
}
UNKNOWN_TERMS = "terms not recorded."


class DatasetLicenseError(PermissionError):
    """Raised before an upload whose weights were trained on data that forbids releasing them."""


def dataset_key(name: str) -> str:
    """A recorded dataset name as a `DATASET_TERMS` key; a name it does not recognise, stripped.

    The restrictive entries are matched first, so a name that mentions EMBED anywhere as a word
    start ("Emory EMBED", "embed-open-data", "EMBED_v2", "EMBED+CMMD") is EMBED.

    >>> [dataset_key(name) for name in ("EMBED_v2", "embed-open-data", "RSNA-Mammo", "CBIS DDSM", "Hospital X")]
    ['embed', 'embed', 'rsna', 'cbis_ddsm', 'dicom_folder']
    """
    text = str(name).strip()
    lowered = text.lower()
    for key, entry in DATASET_TERMS.items():
        if re.search(rf"(?<![a-z])(?:{entry['pattern']})", lowered):
            return key
    return text


def normalize_datasets(names) -> list[str]:
    """Training dataset names as a list of `dataset_key`s without repeats (order kept).

    A single string is one name (or a comma-separated list), never a sequence of letters; None is [].

    >>> normalize_datasets("EMBED"), normalize_datasets(["cmmd", "CMMD", "RSNA, my-data"]), normalize_datasets(None)
    (['embed'], ['cmmd', 'rsna', 'my-data'], [])
    """
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, Iterable):
        raise TypeError(f"training_datasets must be a name or a list of names, got {type(names).__name__}.")
    keys: list[str] = []
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"training_datasets holds {name!r} ({type(name).__name__}); expected dataset names.")
        for part in name.split(","):
            key = dataset_key(part)
            if key and key not in keys:
                keys.append(key)
    return keys


def merge_datasets(*records) -> list[str]:
    """The union of several records (`normalize_datasets` of each), first-seen order: a model keeps
    the data of the model it started from.

    >>> merge_datasets(["embed"], "cbis_ddsm", None, ["EMBED"])
    ['embed', 'cbis_ddsm']
    """
    return normalize_datasets([name for record in records for name in normalize_datasets(record)])


def recorded_datasets(dataset_folder) -> list[str]:
    """The training-data record of a dataset folder: the licence key its converter wrote into
    `conversion.json` (`dataset`, else `converter`); the folder's name when there is no such file
    (a dataset the package did not convert; its terms are then "not recorded")."""
    folder = Path(dataset_folder)
    summary_path = folder / CONVERSION_FILE
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{summary_path} cannot be read ({error}); convert the dataset again.") from error
        name = summary.get("dataset") or summary.get("converter")
        if name:
            return normalize_datasets(name)
    logger.warning("%s has no %s: its training data is recorded as %r (terms not recorded); pass "
                   "--training_datasets NAME to record what it is.", folder, CONVERSION_FILE, folder.name)
    return normalize_datasets(folder.resolve().name)


def check_release_allowed(training_datasets, acknowledge_data_license: bool = False) -> None:
    """Refuse (raise `DatasetLicenseError`) to release weights trained on data whose licence forbids it.

    Unknown datasets are allowed with a warning: their terms are the uploader's to check.
    """
    keys = normalize_datasets(training_datasets)
    restricted = [key for key in keys if DATASET_TERMS.get(key, {}).get("forbids_weight_release")]
    if restricted and not acknowledge_data_license:
        terms = "; ".join(f"{DATASET_TERMS[key]['name']}: {DATASET_TERMS[key]['terms']}" for key in restricted)
        raise DatasetLicenseError(
            f"Refusing to upload: this was trained on {', '.join(restricted)} ({terms}). If you hold written "
            "permission to release it, pass acknowledge_data_license=True (push_to_hub(..., "
            "acknowledge_data_license=True), or --acknowledge_data_license for the training scripts). Otherwise "
            "share the code and training recipe, not the weights.")
    unknown = [key for key in keys if key not in DATASET_TERMS]
    if unknown:
        logger.warning("Uploading a model trained on %s, whose terms are not recorded in modeling_mama.hub."
                       "DATASET_TERMS: check that they allow sharing derived weights.", ", ".join(unknown))


def _push_requested(method, args: tuple, kwargs: dict) -> bool:
    """Whether a `save_pretrained` call (the parent's `method`, bound) asks to push, by name or position."""
    try:
        bound = inspect.signature(method).bind_partial(*args, **kwargs)
    except TypeError:
        return bool(kwargs.get("push_to_hub"))
    return bool(bound.arguments.get("push_to_hub"))


class ReleaseGuardMixin:
    """`push_to_hub` and `save_pretrained(..., push_to_hub=True)` check `release_training_datasets()`
    with `check_release_allowed` before the parent class creates a repository or uploads a file.

    Both take `acknowledge_data_license=True` for data whose licence needs permission to release.
    Mixed into `MamaPreTrainedModel` (the record is `config.training_datasets`) and the processors
    (their own `training_datasets`, saved in their config files).
    """

    def release_training_datasets(self) -> list[str]:
        return normalize_datasets(getattr(self, "training_datasets", None))

    def push_to_hub(self, repo_id: str, *args, acknowledge_data_license: bool = False, **kwargs):
        check_release_allowed(self.release_training_datasets(), acknowledge_data_license)
        return super().push_to_hub(repo_id, *args, **kwargs)

    def save_pretrained(self, save_directory, *args, acknowledge_data_license: bool = False, **kwargs):
        if _push_requested(super().save_pretrained, (save_directory, *args), kwargs):
            check_release_allowed(self.release_training_datasets(), acknowledge_data_license)
        return super().save_pretrained(save_directory, *args, **kwargs)


def check_pretrained_location(name_or_path) -> None:
    """Raise a clear `FileNotFoundError` for a local model folder that does not exist.

    transformers reads any path it cannot find as a Hub repo id, and a user who mistyped a folder
    gets "Repo id must be in the form 'repo_name' or 'namespace/repo_name'" (or a network error).
    A name that can only be a path (absolute, starting with ./ ../ or ~, more than one /, or whose
    first folder exists here) is checked here instead.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        return
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        return
    first_part = Path(text).parts[0] if Path(text).parts else ""
    is_path = (text.startswith(("/", "./", "../", "~")) or text.count("/") > 1 or os.sep in text.replace("/", "")
               or (text.count("/") == 1 and Path(first_part).is_dir()))
    if not is_path:
        return
    parent = next((folder for folder in path.parents if folder.is_dir()), None)
    listing = ""
    if parent is not None:
        names = sorted(entry.name for entry in parent.iterdir() if not entry.name.startswith("."))
        listing = f" ({parent} holds: {', '.join(names[:8]) or 'nothing'}{', ...' if len(names) > 8 else ''})"
    raise FileNotFoundError(
        f"No model folder {path}{listing}. Pass the folder that save_pretrained or a training script wrote "
        "(it holds config.json), or a Hub repo id such as 'user/mama-model'.")


def corrupt_weights_error(name_or_path, error: BaseException) -> OSError | None:
    """An `OSError` naming the broken weights file when `error` is safetensors failing to read one."""
    if type(error).__name__ != "SafetensorError":
        return None
    folder = Path(os.fspath(name_or_path)).expanduser() if isinstance(name_or_path, (str, os.PathLike)) else None
    broken = None
    if folder is not None and folder.is_dir():
        from safetensors import safe_open

        for candidate in sorted(folder.glob("*.safetensors")):
            try:
                with safe_open(str(candidate), framework="pt"):
                    pass
            except Exception:
                broken = candidate
                break
    where = broken or (f"a weights file of {folder}" if folder is not None else "the weights file")
    return OSError(f"{where} is truncated or corrupt ({error}). The copy or download probably stopped early: "
                   "copy, download or save the model again.")


def _recipe_rows(config, training_args: dict | None) -> list[tuple[str, str]]:
    rows = [
        ("image pooling", config.image_pooling),
        ("text pooling", config.text_pooling),
        ("projection dim", str(config.projection_dim)),
        ("LoRA", json.dumps(config.lora, sort_keys=True) if config.lora else "none"),
    ]
    for term in ("clip", "multiview", "symmetric_clip", "local"):
        rows.append((f"{term} loss", f"weight {config.loss_weight(term)}"))
    rows.append(("NT-Xent temperature", str(config.nt_xent_temperature)))
    # The caller picks the settings worth a row (examples/pretrain.py: those its recipe table names).
    rows += [(key, str(value)) for key, value in (training_args or {}).items()]
    return rows


def _result_rows(results: dict | None) -> list[dict[str, str]]:
    rows = []
    for setting, tasks in (results or {}).items():
        if not isinstance(tasks, dict):
            continue
        for task, metrics in tasks.items():
            if not isinstance(metrics, dict):
                continue
            for metric in ("balanced_accuracy", "auc"):
                if isinstance(metrics.get(metric), (int, float)):
                    rows.append({"task": task, "setting": setting.replace("_", "-"), "metric": metric,
                                 "value": f"{metrics[metric]:.3f}"})
    return rows


def render_model_card(config, *, repo_id: str = "path/to/this/folder", training_args: dict | None = None,
                      results: dict | None = None, template_path: str | Path = TEMPLATE_PATH):
    """The model card (a `huggingface_hub.ModelCard`) of a MaMA model, from its config and, when known,
    the training settings to list (`{"learning_rate": 4e-5, ...}`, e.g. `training.recipes.recipe_settings`)
    and evaluation results (`{"zero_shot": {"density": {...}}}`).

    The card lists each training dataset with its terms, carries the attribution and citations of
    the datasets whose licence asks for them (CC BY), and warns when a dataset forbids releasing weights.
    """
    from huggingface_hub import ModelCard, ModelCardData

    keys = normalize_datasets(config.training_datasets)
    known = [DATASET_TERMS[key] for key in keys if key in DATASET_TERMS]
    licences = {entry["license"] for entry in known}
    if keys and len(known) < len(keys):
        license_id = "other"  # some data's terms are not recorded
    else:
        license_id = licences.pop() if len(licences) == 1 else ("other" if known else "apache-2.0")
    card_data = ModelCardData(
        library_name="transformers", pipeline_tag="zero-shot-image-classification", license=license_id,
        tags=["mammography", "medical-imaging", "vision-language", "clip", "mama", "custom_code"],
        datasets=keys or None,
    )
    training_data = [
        {"name": DATASET_TERMS.get(key, {}).get("name", key), "terms": DATASET_TERMS.get(key, {}).get("terms", UNKNOWN_TERMS)}
        for key in keys
    ]
    attributions = [entry["attribution"] for entry in known if entry.get("attribution")]
    citations = list(dict.fromkeys(citation for entry in known for citation in entry.get("citations", [])))
    restricted = [entry["name"] for entry in known if entry["forbids_weight_release"]]
    licence_note = (
        f"**Release restriction:** weights trained on {', '.join(restricted)} may not be published without "
        "written permission from the data provider." if restricted else ""
    )
    return ModelCard.from_template(
        card_data, template_path=str(template_path), model_name=repo_id.split("/")[-1], repo_id=repo_id,
        vision_description=f"{config.vision_config.model_type}, width {config.vision_config.hidden_size}",
        text_description=f"{config.text_config.model_type}, width {config.text_config.hidden_size}",
        training_data=training_data, licence_note=licence_note, attributions=attributions,
        dataset_citations=citations, recipe=_recipe_rows(config, training_args),
        results=_result_rows(results), synthetic_only=bool(keys) and set(keys) == {"synthetic"},
    )


def write_model_card(folder: str | Path, config, *, training_args: dict | None = None,
                     results: dict | None = None, repo_id: str | None = None) -> Path | None:
    """Render the card into `folder/README.md` (atomically), reading `results.json` there if present.

    Returns None (and writes nothing) when the template is not available, e.g. for a model loaded as
    remote code without this package installed.
    """
    folder = Path(folder)
    if not TEMPLATE_PATH.exists():
        return None
    if results is None and (folder / "results.json").exists():
        results = json.loads((folder / "results.json").read_text())
    if training_args is None and (folder / "training_args.json").exists():
        training_args = json.loads((folder / "training_args.json").read_text())
    card = render_model_card(config, repo_id=repo_id or folder.name, training_args=training_args, results=results)
    return write_text_atomic(folder / "README.md", str(card))


__all__ = [
    "CONVERSION_FILE", "DATASET_TERMS", "DatasetLicenseError", "ReleaseGuardMixin", "check_pretrained_location",
    "check_release_allowed", "corrupt_weights_error", "dataset_key", "merge_datasets", "normalize_datasets", "recorded_datasets", "render_model_card", "write_model_card",
]

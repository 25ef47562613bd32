"""Reports -> token ids with one sentence-separator token per sentence (METHOD.md 1 and 3).

A tokenised report is ``bos s1 sep s2 sep ... sK sep eos`` (then padding). The separator ends each
sentence: a causal text tower reads the sentence's feature at its `sep` token, a bidirectional one
pools the span from the previous `sep` (or bos) up to it (DESIGN.md "Model inputs").

Two details of the token sequence:

- The separator stands in for the sentence's final period, as in the reference captions (which
  replaced "." by the separator): a sentence's final "." or ";" is not tokenised, so "Negative."
  and "Negative" give the same tokens. Periods inside the sentence are kept.
- For a byte-level BPE (GPT-2, BioMedLM) every sentence is tokenised with one leading space, as
  running text is, so a sentence has the same tokens wherever it stands in the report. Other
  tokenizers (WordPiece, SentencePiece) mark word starts themselves and get the sentence as is
  (`uses_leading_space`).

Too long a report raises (`truncation="error"`, the default) or, with `truncation="warn"`, warns and
drops whole sentences from the end; it is never silently cut mid-sentence (METHOD.md **Fix**).

The special tokens are the reference's (`SPECIAL_TOKENS`); `add_special_tokens` adds those a
tokenizer lacks. For tiny / offline models `train_report_tokenizer` trains a small byte-level BPE
on report sentences in well under a second (the paper preset uses BioMedLM's tokenizer, Hub only).

>>> tokenizer = train_report_tokenizer(["Overall Assessment: Negative.", "Overall Assessment: Benign."] * 50,
...                                    vocab_size=300)
>>> encoded = batch_tokenize_reports([["Overall Assessment: Negative.", "BI-RADS 1."]], tokenizer)
>>> ids = encoded["input_ids"][0].tolist()
>>> [ids[i] for i in encoded["sentence_positions"][0]] == [tokenizer.sep_token_id] * 2
True
>>> ids[0] == tokenizer.bos_token_id, ids[-1] == tokenizer.eos_token_id
(True, True)
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

DEFAULT_MAX_LENGTH = 144

# The reference's token strings (GPT-2 style; eos is GPT-2's own end-of-text token).
SPECIAL_TOKENS = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "pad_token": "<|padtext|>",
    "sep_token": "<|separatetext|>",
    "mask_token": "<|masktext|>",
    "unk_token": "<|unknowntext|>",
}
SENTENCE_SEPARATOR = SPECIAL_TOKENS["sep_token"]
TRUNCATION_MODES = ("error", "warn")


def add_special_tokens(tokenizer) -> int:
    """Give `tokenizer` every token a report needs; returns how many tokens were added to its vocabulary.

    bos, eos, pad, sep, mask and unk are added when missing. A tokenizer that uses its eos as bos
    or unk (GPT-2, BioMedLM) gets its own bos and unk too, as in the paper (BioMedLM gains bos, pad,
    sep, mask and unk: 5 tokens). Resize the text tower's embeddings to `len(tokenizer)` afterwards.
    """
    eos = tokenizer.eos_token
    wanted = {}
    for name, token in SPECIAL_TOKENS.items():
        current = getattr(tokenizer, name, None)
        shares_eos = name in ("bos_token", "unk_token") and current is not None and current == eos
        if current is None or shares_eos:
            wanted[name] = token
    return tokenizer.add_special_tokens(wanted) if wanted else 0


def split_sentences(text: str) -> list[str]:
    """Split running text at ". " boundaries (a period followed by white space).

    Only for text given as one string: a period inside a value ("Dr. Smith") would split it too, so
    pass a list of sentences when they are known (`reports.build_report` returns one).

    >>> split_sentences("Procedure reported: MG Screening. Overall Assessment: Negative.")
    ['Procedure reported: MG Screening.', 'Overall Assessment: Negative.']
    """
    if not isinstance(text, str):
        raise TypeError(f"split_sentences takes a string, got {type(text).__name__}.")
    return [sentence for sentence in re.split(r"(?<=\.)\s+", text.strip()) if sentence]


def _special_ids(tokenizer) -> tuple[int, int, int, int]:
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
    missing = [name for name, token_id in zip(("bos", "eos", "sep", "pad"), ids) if token_id is None]
    if missing:
        raise ValueError(
            f"The tokenizer has no {'/'.join(missing)} token; call modeling_mama.tokenization.add_special_tokens("
            f"tokenizer) first (and resize the text tower's embeddings to len(tokenizer))."
        )
    return ids


def uses_leading_space(tokenizer) -> bool:
    """Whether `tokenizer` is a byte-level BPE that reads a word start from a preceding space (GPT-2
    style: " Negative" and "Negative" are different tokens), so sentences get one leading space.

    WordPiece (BERT) and SentencePiece (Llama, T5) tokenizers mark word starts themselves: for them a
    leading space is at best ignored and at worst an extra token.
    """
    if hasattr(tokenizer, "byte_encoder"):  # the slow GPT-2 tokenizer
        return not getattr(tokenizer, "add_prefix_space", False)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre_tokenizer = getattr(backend, "pre_tokenizer", None)
    description = repr(pre_tokenizer) if pre_tokenizer is not None else ""
    return "ByteLevel" in description and "add_prefix_space=True" not in description


def _sentence_text(sentence, report_index: int, prefix: str = " ") -> str:
    if not isinstance(sentence, str):
        raise TypeError(f"Report {report_index} has a sentence of type {type(sentence).__name__}; "
                        f"sentences are strings.")
    text = " ".join(sentence.split())
    if text.endswith((".", ";")):
        text = text[:-1].rstrip()  # the separator token stands in for the final period
    if not text:
        raise ValueError(f"Report {report_index} has an empty sentence {sentence!r}.")
    return prefix + text


def _check_reports(reports) -> list[list[str]]:
    if isinstance(reports, str) or not isinstance(reports, Sequence):
        raise TypeError("Pass a list of reports, each a list of sentences (use split_sentences for running text).")
    checked = []
    for index, report in enumerate(reports):
        if isinstance(report, str) or not isinstance(report, Sequence):
            raise TypeError(
                f"Report {index} is a {type(report).__name__}, not a list of sentences; wrap one report's sentences "
                f"in a list, or split running text with split_sentences."
            )
        if len(report) == 0:
            raise ValueError(f"Report {index} has no sentences; a report needs at least one.")
        checked.append(list(report))
    return checked


def _encode(reports: list[list[str]], tokenizer, max_length: int, truncation: str) -> list[tuple[list[int], list[int]]]:
    """(input_ids, sentence_positions) of each report, unpadded."""
    if truncation not in TRUNCATION_MODES:
        raise ValueError(f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}.")
    if max_length < 4:
        raise ValueError(f"max_length={max_length} cannot hold bos, one sentence, its separator and eos.")
    bos, eos, sep, _ = _special_ids(tokenizer)
    prefix = " " if uses_leading_space(tokenizer) else ""
    texts = [_sentence_text(sentence, index, prefix) for index, report in enumerate(reports) for sentence in report]
    # One call for every sentence of the batch: the Rust tokenizer batches it.
    token_lists = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    encoded, cursor = [], 0
    for index, report in enumerate(reports):
        sentence_tokens = token_lists[cursor:cursor + len(report)]
        cursor += len(report)
        for position, tokens in enumerate(sentence_tokens):
            if sep in tokens:
                raise ValueError(f"Sentence {position} of report {index} contains the separator token itself: "
                                 f"{report[position]!r}.")
        needed = 2 + sum(len(tokens) + 1 for tokens in sentence_tokens)
        if needed > max_length:
            message = (f"Report {index} needs {needed} tokens (bos, {len(report)} sentences with their separators, "
                       f"eos), more than max_length={max_length}.")
            if truncation == "error":
                raise ValueError(message + " Shorten the report, raise max_length (--max_length in the example "
                                           "scripts), or pass truncation='warn' (--truncation warn) to drop whole "
                                           "sentences from the end.")
            sentence_tokens = _fit(sentence_tokens, max_length)
            warnings.warn(message + f" Kept its first {len(sentence_tokens)} sentence(s).", stacklevel=3)
        input_ids, positions = [bos], []
        for tokens in sentence_tokens:
            input_ids.extend(tokens)
            positions.append(len(input_ids))
            input_ids.append(sep)
        input_ids.append(eos)
        encoded.append((input_ids, positions))
    return encoded


def _fit(sentence_tokens: list[list[int]], max_length: int) -> list[list[int]]:
    """The leading whole sentences that fit; a first sentence too long on its own is cut."""
    kept, used = [], 2
    for tokens in sentence_tokens:
        if used + len(tokens) + 1 > max_length:
            break
        kept.append(tokens)
        used += len(tokens) + 1
    return kept or [sentence_tokens[0][:max_length - 3]]


def tokenize_report(sentences: Sequence[str], tokenizer, max_length: int = DEFAULT_MAX_LENGTH,
                    truncation: str = "error") -> dict[str, list[int]]:
    """Deprecated (nothing in the package uses it; removed in modeling_mama 0.3): one report -> unpadded
    `input_ids`, `attention_mask` and `sentence_positions`. Use `MamaProcessor(reports=[sentences])` or
    `batch_tokenize_reports([sentences], tokenizer)`, which give the same ids, padded, as tensors.
    """
    warnings.warn("tokenize_report is deprecated and will be removed in modeling_mama 0.3: use "
                  "MamaProcessor(reports=...) or batch_tokenize_reports([sentences], tokenizer).", FutureWarning,
                  stacklevel=2)
    if isinstance(sentences, str):
        raise TypeError("tokenize_report takes a list of sentences; split running text with split_sentences(text).")
    (input_ids, positions), = _encode(_check_reports([sentences]), tokenizer, max_length, truncation)
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "sentence_positions": positions}


def batch_tokenize_reports(reports: Sequence[Sequence[str]], tokenizer, max_length: int = DEFAULT_MAX_LENGTH,
                           pad_to_multiple_of: int | None = None, truncation: str = "error") -> dict[str, torch.Tensor]:
    """Reports (each a list of sentences) -> padded tensors for `MamaModel`.

    Returns `input_ids` long [B, L] (right-padded with the pad id), `attention_mask` long [B, L],
    `sentence_positions` long [B, S] (index of each sentence's `sep`; 0 where padded) and
    `sentence_mask` bool [B, S], with L the longest report (rounded up to `pad_to_multiple_of`) and S
    the most sentences.
    """
    reports = _check_reports(reports)
    if not reports:
        raise ValueError("batch_tokenize_reports got no reports.")
    encoded = _encode(reports, tokenizer, max_length, truncation)
    pad_id = tokenizer.pad_token_id
    length = max(len(ids) for ids, _ in encoded)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    num_sentences = max(len(positions) for _, positions in encoded)
    batch = len(encoded)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    sentence_positions = torch.zeros((batch, num_sentences), dtype=torch.long)
    sentence_mask = torch.zeros((batch, num_sentences), dtype=torch.bool)
    for row, (ids, positions) in enumerate(encoded):
        input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, :len(ids)] = 1
        sentence_positions[row, :len(positions)] = torch.tensor(positions, dtype=torch.long)
        sentence_mask[row, :len(positions)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "sentence_positions": sentence_positions,
            "sentence_mask": sentence_mask}


def train_report_tokenizer(sentences: Sequence[str], vocab_size: int = 1024, save_dir: str | os.PathLike | None = None,
                           min_frequency: int = 2):
    """Train a GPT-2-style byte-level BPE on report sentences; returns a `PreTrainedTokenizerFast`.

    The tokenizer has all `SPECIAL_TOKENS` (ids 0-5), no prefix-space surprises (sentences are fed
    the way `batch_tokenize_reports` feeds them, with one leading space) and saves / loads with
    `save_pretrained` / `AutoTokenizer.from_pretrained`, offline. With `save_dir` it is also saved
    there (each file written under a temporary name, then renamed).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sentences = [" " + " ".join(s.split()) for s in sentences if isinstance(s, str) and s.strip()]
    if not sentences:
        raise ValueError("train_report_tokenizer needs at least one non-empty sentence.")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    smallest = len(alphabet) + len(SPECIAL_TOKENS)
    if vocab_size < smallest:
        raise ValueError(f"vocab_size={vocab_size} is below {smallest} "
                         f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens).")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS.values()), initial_alphabet=alphabet)
    backend.train_from_iterator(sentences, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)
    # transformers can build an empty tokenizer without complaint (ECOSYSTEM.md): check it.
    if len(tokenizer) != backend.get_vocab_size() or len(tokenizer) < smallest:
        raise RuntimeError(f"The trained tokenizer has {len(tokenizer)} tokens, expected {backend.get_vocab_size()}.")
    if save_dir is not None:
        save_tokenizer(tokenizer, save_dir)
    return tokenizer


def save_tokenizer(tokenizer, save_dir: str | os.PathLike) -> list[str]:
    """`tokenizer.save_pretrained(save_dir)`, with every file written under a temporary name first."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=save_dir))
    try:
        tokenizer.save_pretrained(staging)
        names = sorted(os.listdir(staging))
        for name in names:
            os.replace(staging / name, save_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [str(save_dir / name) for name in names]


__all__ = [
    "DEFAULT_MAX_LENGTH", "SENTENCE_SEPARATOR", "SPECIAL_TOKENS", "TRUNCATION_MODES", "add_special_tokens",
    "batch_tokenize_reports", "save_tokenizer", "split_sentences", "tokenize_report", "train_report_tokenizer",
    "uses_leading_space",
]

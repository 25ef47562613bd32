"""Special tokens, report tokenisation (one separator per sentence), padding, truncation, the offline BPE."""

import json
import time

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from modeling_mama.reports import ReportFields, build_report, zero_shot_prompts
from modeling_mama.tokenization import (
    SENTENCE_SEPARATOR,
    SPECIAL_TOKENS,
    add_special_tokens,
    batch_tokenize_reports,
    split_sentences,
    tokenize_report,
    train_report_tokenizer,
)

def one_report(sentences, tokenizer, **kwargs) -> dict[str, list[int]]:
    """One report tokenised alone, unpadded: row 0 of a batch of one."""
    batch = batch_tokenize_reports([sentences], tokenizer, **kwargs)
    length, count = int(batch["attention_mask"][0].sum()), int(batch["sentence_mask"][0].sum())
    return {"input_ids": batch["input_ids"][0, :length].tolist(), "attention_mask": [1] * length,
            "sentence_positions": batch["sentence_positions"][0, :count].tolist()}


RACES = ["African American  or Black", "Caucasian or White", "Asian", None]
ETHNICITIES = ["Non-Hispanic or Latino", "Hispanic or Latino", None]


def sample_fields(count, seed=0):
    rng = np.random.default_rng(seed)
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    return [ReportFields(
        procedure=pick(["MG Screening Bilateral", "MG Diagnostic Mammo Left", "MG Dx. Bilat."]), race=pick(RACES),
        ethnicity=pick(ETHNICITIES), age=int(rng.integers(35, 90)), image_type="2D", laterality=pick(["L", "R"]),
        view=pick(["CC", "MLO", "ML"]), density=int(rng.integers(1, 6)), birads=int(rng.integers(0, 7)),
        mass_shape=pick(["Oval", "Irregular", None]), mass_density=pick(["Isodense", "High density", None]),
        calc_find=pick(["Punctate", "Fine pleomorphic", None]), calc_distribution=pick(["Grouped", None]),
    ) for _ in range(count)]


@pytest.fixture(scope="module")
def report_sentences():
    return [sentence for fields in sample_fields(400) for sentence in build_report(fields)]


@pytest.fixture(scope="module")
def tokenizer(report_sentences):
    return train_report_tokenizer(report_sentences, vocab_size=700)


def gpt2_like_tokenizer():
    """BioMedLM's situation: a byte-level BPE whose only special token is <|endoftext|> (bos = eos = unk)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(["Overall Assessment: Negative."] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


def bert_like_tokenizer():
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.train_from_iterator(["overall assessment negative"] * 5, trainers.WordPieceTrainer(
        vocab_size=100, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                                   cls_token="[CLS]", mask_token="[MASK]")


# ------------------------------------------------------------------------------------ special tokens
def test_add_special_tokens_to_a_gpt2_style_tokenizer_adds_the_papers_five():
    tokenizer = gpt2_like_tokenizer()
    before = len(tokenizer)
    assert tokenizer.sep_token_id is None
    assert add_special_tokens(tokenizer) == 5
    assert len(tokenizer) == before + 5
    assert tokenizer.eos_token == "<|endoftext|>"
    for name in ("bos_token", "pad_token", "sep_token", "mask_token", "unk_token"):
        assert getattr(tokenizer, name) == SPECIAL_TOKENS[name]
    assert tokenizer.sep_token == SENTENCE_SEPARATOR
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.sep_token_id,
           tokenizer.mask_token_id, tokenizer.unk_token_id}
    assert len(ids) == 6 and max(ids) == len(tokenizer) - 1
    assert add_special_tokens(tokenizer) == 0  # idempotent


def test_add_special_tokens_keeps_a_berts_own_separator():
    tokenizer = bert_like_tokenizer()
    assert add_special_tokens(tokenizer) == 2  # bos and eos only
    assert tokenizer.sep_token == "[SEP]" and tokenizer.pad_token == "[PAD]"
    encoded = one_report(["overall assessment negative.", "negative"], tokenizer)
    assert [encoded["input_ids"][i] for i in encoded["sentence_positions"]] == [tokenizer.sep_token_id] * 2


def test_tokenizing_needs_the_special_tokens():
    with pytest.raises(ValueError, match=r"The tokenizer has no sep/pad token; call modeling_mama.tokenization"
                                         r".add_special_tokens\(tokenizer\) first"):
        one_report(["Negative."], gpt2_like_tokenizer())


# ------------------------------------------------------------------------------------ one report
def test_tokenize_report_structure_and_round_trip(tokenizer):
    sentences = build_report(sample_fields(1, seed=3)[0])
    encoded = one_report(sentences, tokenizer)
    ids, positions = encoded["input_ids"], encoded["sentence_positions"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert encoded["attention_mask"] == [1] * len(ids)
    assert positions == [i for i, token in enumerate(ids) if token == tokenizer.sep_token_id]
    assert len(positions) == len(sentences)
    # each span between separators decodes back to its sentence (its final period is the separator)
    starts = [0] + positions[:-1]
    for sentence, start, end in zip(sentences, starts, positions):
        assert tokenizer.decode(ids[start + 1:end]) == " " + sentence[:-1]
    assert positions[-1] == len(ids) - 2


def test_a_period_inside_a_value_is_not_a_boundary_and_one_sentence_reports_work(tokenizer):
    encoded = one_report(["Procedure reported: MG Dx. Mammo Bilat."], tokenizer)
    ids = encoded["input_ids"]
    assert encoded["sentence_positions"] == [len(ids) - 2]
    assert ids.count(tokenizer.sep_token_id) == 1
    assert tokenizer.decode(ids[1:-2]) == " Procedure reported: MG Dx. Mammo Bilat"


def test_sentence_tokens_do_not_depend_on_position(tokenizer):
    sentence = "Overall Assessment: Negative."
    first = one_report([sentence, "Impressions: BI-RADS Category 1: negative."], tokenizer)
    second = one_report(["Impressions: BI-RADS Category 1: negative.", sentence], tokenizer)
    first_span = first["input_ids"][1:first["sentence_positions"][0]]
    second_span = second["input_ids"][second["sentence_positions"][0] + 1:second["sentence_positions"][1]]
    assert first_span == second_span


def test_split_sentences():
    assert split_sentences("Findings: a mass. The mass is Oval and Isodense.  Overall Assessment: Benign.") == [
        "Findings: a mass.", "The mass is Oval and Isodense.", "Overall Assessment: Benign."]
    assert split_sentences("No final period") == ["No final period"]
    assert split_sentences("Ratio 1.5 is kept.") == ["Ratio 1.5 is kept."]


def test_bad_reports_raise(tokenizer):
    with pytest.raises(TypeError, match="Report 0 is a str, not a list of sentences"):
        one_report("Overall Assessment: Negative.", tokenizer)
    with pytest.raises(ValueError, match="Report 0 has no sentences"):
        one_report([], tokenizer)
    with pytest.raises(ValueError, match=r"Report 0 has an empty sentence ' \.'"):
        one_report(["Negative.", " ."], tokenizer)
    with pytest.raises(ValueError, match="contains the separator token itself"):
        one_report([f"Negative{SENTENCE_SEPARATOR} Benign."], tokenizer)
    with pytest.raises(TypeError, match=r"Report 1 is a str, not a list of sentences"):
        batch_tokenize_reports([["Negative."], "Benign."], tokenizer)
    with pytest.raises(ValueError, match=r"truncation must be one of \('error', 'warn'\)"):
        one_report(["Negative."], tokenizer, truncation=True)


# ------------------------------------------------------------------------------------ truncation
def test_too_long_report_raises_naming_the_limit(tokenizer):
    sentences = build_report(sample_fields(1, seed=5)[0])
    needed = len(one_report(sentences, tokenizer, max_length=10_000)["input_ids"])
    assert len(one_report(sentences, tokenizer, max_length=needed)["input_ids"]) == needed  # exactly fits
    with pytest.raises(ValueError, match=rf"Report 0 needs {needed} tokens .* more than max_length={needed - 1}\."):
        one_report(sentences, tokenizer, max_length=needed - 1)
    # The advice names the example scripts' flags too: a CLI user cannot pass a keyword argument.
    with pytest.raises(ValueError, match=r"raise max_length \(--max_length .*truncation='warn' \(--truncation warn\)"):
        one_report(sentences, tokenizer, max_length=needed - 1)
    with pytest.raises(ValueError, match=r"Report 1 needs .* max_length=20"):
        batch_tokenize_reports([["Negative."], sentences], tokenizer, max_length=20)


def test_warn_truncation_keeps_whole_leading_sentences(tokenizer):
    sentences = build_report(sample_fields(1, seed=5)[0])
    full = one_report(sentences, tokenizer, max_length=10_000)
    limit = full["sentence_positions"][2] + 2 + 3  # room for three sentences and eos, plus a little
    with pytest.warns(UserWarning, match=rf"more than max_length={limit}\. Kept its first 3 sentence\(s\)"):
        cut = one_report(sentences, tokenizer, max_length=limit, truncation="warn")
    assert cut["input_ids"] == full["input_ids"][:full["sentence_positions"][2] + 1] + [tokenizer.eos_token_id]
    assert cut["sentence_positions"] == full["sentence_positions"][:3]
    with pytest.warns(UserWarning, match=r"Kept its first 1 sentence"):  # a first sentence too long on its own
        tiny = one_report(sentences, tokenizer, max_length=6, truncation="warn")
    assert len(tiny["input_ids"]) == 6 and tiny["input_ids"][-2:] == [tokenizer.sep_token_id, tokenizer.eos_token_id]
    assert tiny["sentence_positions"] == [4]


# ------------------------------------------------------------------------------------ batches
def test_batch_padding_and_masks_match_single_reports(tokenizer):
    reports = [build_report(fields) for fields in sample_fields(5, seed=9)] + [["Overall Assessment: Negative."]]
    batch = batch_tokenize_reports(reports, tokenizer, pad_to_multiple_of=8)
    singles = [one_report(report, tokenizer) for report in reports]
    longest = max(len(single["input_ids"]) for single in singles)
    most = max(len(report) for report in reports)
    assert batch["input_ids"].shape == (6, -(-longest // 8) * 8) and batch["input_ids"].dtype == torch.long
    assert batch["sentence_positions"].shape == (6, most) and batch["sentence_mask"].dtype == torch.bool
    for row, (single, report) in enumerate(zip(singles, reports)):
        length, count = len(single["input_ids"]), len(report)
        assert batch["input_ids"][row, :length].tolist() == single["input_ids"]
        assert (batch["input_ids"][row, length:] == tokenizer.pad_token_id).all()
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (batch["input_ids"].shape[1] - length)
        assert batch["sentence_positions"][row].tolist() == single["sentence_positions"] + [0] * (most - count)
        assert batch["sentence_mask"][row].tolist() == [True] * count + [False] * (most - count)
        assert (batch["input_ids"][row, batch["sentence_positions"][row, :count]] == tokenizer.sep_token_id).all()


def test_zero_shot_prompts_fit_their_budgets(tokenizer):
    fields = sample_fields(1, seed=1)[0]
    for task in ("birads", "density"):
        batch = batch_tokenize_reports(zero_shot_prompts(task, fields), tokenizer, max_length=144)
        assert batch["sentence_mask"].sum(dim=1).tolist() == [len(p) for p in zero_shot_prompts(task, fields)]


# ------------------------------------------------------------------------------------ the offline BPE
def test_trained_tokenizer_has_its_vocabulary_and_special_tokens(tokenizer):
    assert len(tokenizer) == 700  # not silently empty (ECOSYSTEM.md)
    assert [tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS.values()] == list(range(6))
    assert tokenizer.sep_token_id == 3 and tokenizer.pad_token_id == 2
    assert add_special_tokens(tokenizer) == 0
    # byte-level: any text round-trips, nothing is unknown
    text = " Ünïcode ≥ 5 mm, «quoted»"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text and tokenizer.unk_token_id not in ids
    # the report vocabulary was learnt: a frequent sentence is a handful of tokens, not one per byte
    sentence = " Overall Assessment: Negative"
    assert len(tokenizer(sentence, add_special_tokens=False)["input_ids"]) <= 5


def test_trained_tokenizer_round_trips_offline(tokenizer, report_sentences, tmp_path):
    tokenizer.save_pretrained(tmp_path / "saved")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert len(loaded) == len(tokenizer) and loaded.sep_token_id == tokenizer.sep_token_id
    assert {name: getattr(loaded, name) for name in SPECIAL_TOKENS} == SPECIAL_TOKENS
    reports = [build_report(fields) for fields in sample_fields(4, seed=2)]
    for key, value in batch_tokenize_reports(reports, tokenizer).items():
        assert torch.equal(value, batch_tokenize_reports(reports, loaded)[key])
    written = train_report_tokenizer(report_sentences, vocab_size=500, save_dir=tmp_path / "direct")
    assert sorted(p.name for p in (tmp_path / "direct").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    config = json.loads((tmp_path / "direct" / "tokenizer_config.json").read_text())
    assert config["sep_token"] == SENTENCE_SEPARATOR
    assert len(AutoTokenizer.from_pretrained(tmp_path / "direct")) == len(written) == 500


def test_training_is_fast_and_checks_its_arguments(report_sentences):
    started = time.perf_counter()
    train_report_tokenizer(report_sentences[:5000], vocab_size=1024)
    assert time.perf_counter() - started < 5.0  # ~0.1 s on an idle core
    with pytest.raises(ValueError, match=r"vocab_size=100 is below 262"):
        train_report_tokenizer(report_sentences, vocab_size=100)
    with pytest.raises(ValueError, match="needs at least one non-empty sentence"):
        train_report_tokenizer(["", "  "])


def test_leading_space_only_for_byte_level_tokenizers(report_tokenizer):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from modeling_mama.tokenization import SPECIAL_TOKENS, uses_leading_space

    assert uses_leading_space(report_tokenizer)  # the GPT-2-style byte-level BPE of the tiny preset
    # A SentencePiece-style (Metaspace) tokenizer marks word starts itself: no extra leading space.
    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.train_from_iterator(["Overall Assessment: Negative", "Breast composition: fatty"] * 20,
                                trainers.UnigramTrainer(vocab_size=60, special_tokens=list(SPECIAL_TOKENS.values()),
                                                        unk_token=SPECIAL_TOKENS["unk_token"], show_progress=False))
    sentencepiece = PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)
    assert not uses_leading_space(sentencepiece)
    encoded = one_report(["Overall Assessment: Negative."], sentencepiece)
    expected = sentencepiece("Overall Assessment: Negative", add_special_tokens=False)["input_ids"]
    assert encoded["input_ids"][1:-2] == expected


def test_tokenize_report_is_deprecated_and_gives_the_batch_row(tokenizer):
    sentences = build_report(sample_fields(1, seed=4)[0])
    with pytest.warns(FutureWarning, match="tokenize_report is deprecated.*batch_tokenize_reports"):
        assert tokenize_report(sentences, tokenizer) == one_report(sentences, tokenizer)

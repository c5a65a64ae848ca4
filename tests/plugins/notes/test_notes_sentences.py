"""clinical-notes, unit=sentence (the default): splitting, pieces, one mean-pooled state per sentence, caps."""

from __future__ import annotations

import pytest
import torch
from mmclinic_clinical_notes.backbone import get_model, resolve_model_path
from mmclinic_clinical_notes.config import NotesConfig
from mmclinic_clinical_notes.encoder import NotesEncoder
from mmclinic_clinical_notes.piece_cache import PieceCache, piece_cache
from mmclinic_clinical_notes.plugin import ClinicalNotesPlugin
from mmclinic_clinical_notes.windows import sentence_inputs, split_sentences
from notes_samples import D_MODEL, SENTENCES, K, seeded_encoder

from mmclinic.case import NoteRef
from mmclinic.errors import ConfigError, InputError
from mmclinic.plugin_api import TaskSpec


@pytest.fixture(scope="module")
def splugin() -> ClinicalNotesPlugin:
    return ClinicalNotesPlugin(NotesConfig(unit="sentence"))


@pytest.fixture(scope="module")
def sencoder(splugin: ClinicalNotesPlugin, spec: TaskSpec) -> NotesEncoder:
    enc: NotesEncoder = seeded_encoder(splugin, spec)
    return enc


def test_the_bundled_weights_pool_the_default_unit() -> None:
    # Otherwise the bundled tumor-risk model would be refused (model.notes_unit_mismatch) at defaults.
    from mmclinic.engine.checkpoint import read_checkpoint
    from mmclinic.engine.engine import resolve_model_path as resolve_task_model
    from mmclinic.registry import get_registry

    state = read_checkpoint(resolve_task_model("tumor-risk", get_registry()))["state_dict"]
    extra = [v for k, v in state.items() if k.startswith("encoders.notes.") and k.endswith("_extra_state")]
    assert len(extra) == 1 and extra[0].get("unit", "window") == NotesConfig().unit == "sentence"


def test_split_sentences() -> None:
    text = (
        "HISTORY OF PRESENT ILLNESS: The patient denies hemoptysis. Reports weight loss!\n\n"
        "INDICATION: 64-year-old man, current smoker; possible night sweats.  Dose 2.5 mg at 10:30 daily?  "
    )
    assert split_sentences(text) == [
        "HISTORY OF PRESENT ILLNESS:",
        "The patient denies hemoptysis.",
        "Reports weight loss!",
        "INDICATION:",
        "64-year-old man, current smoker;",
        "possible night sweats.",
        "Dose 2.5 mg at 10:30 daily?",
    ]
    assert split_sentences(" \n\t ") == []
    # Nothing but white space is lost.
    assert "".join("".join(split_sentences(text)).split()) == "".join(text.split())


def test_long_sentence_is_cut_into_pieces_without_loss() -> None:
    ids = [list(range(10, 33)), [7]]
    out = sentence_inputs(ids, content_length=10, prefix=(101,), suffix=(102,))
    assert [len(seq) for seq, _ in out] == [12, 12, 5, 3]
    kept = [t for seq, keep in out for t, k in zip(seq, keep, strict=True) if k]
    assert kept == ids[0] + ids[1]
    assert all(seq[0] == 101 and seq[-1] == 102 for seq, _ in out)
    with pytest.raises(ValueError):
        sentence_inputs(ids, 0, (), ())


def test_load_makes_one_sequence_per_sentence(splugin: ClinicalNotesPlugin, spec: TaskSpec) -> None:
    text = " ".join(SENTENCES[:3])
    item = splugin.load([NoteRef(text.encode(), note_type="Pulmonology consult")], spec)
    sentences = split_sentences(text)
    assert len(sentences) == 4  # SENTENCES[2] has a ";" clause
    assert item.data["input_ids"].shape[0] == len(sentences)
    assert item.summary["unit"] == "sentence" and item.summary["total_sentences"] == len(sentences)
    assert item.summary["notes"][0]["sentences"] == len(sentences)
    info = splugin.tokenizer()
    for row, sentence in enumerate(sentences):
        kept = item.data["input_ids"][row][item.data["keep_mask"][row]].tolist()
        assert kept == info.encode(sentence)
    assert item.data["window_type"].tolist() == [4] * len(sentences)  # pulmonology_consult


def test_sentence_cap_rejects_case(spec: TaskSpec) -> None:
    small = ClinicalNotesPlugin(NotesConfig(unit="sentence", max_sentences_per_case=3))
    with pytest.raises(InputError) as exc:
        small.load([NoteRef(" ".join(SENTENCES).encode())], spec)
    assert exc.value.reason == "notes.too_large" and "3 sentences" in str(exc.value)


def test_sentence_longer_than_model_is_a_config_error(spec: TaskSpec) -> None:
    with pytest.raises(ConfigError) as exc:
        ClinicalNotesPlugin(NotesConfig(unit="sentence", max_sentence_length=1024)).build_encoder(16, spec)
    assert exc.value.reason == "notes.sentence_too_long"


def test_states_are_mean_pooled_sentence_embeddings(
    splugin: ClinicalNotesPlugin, sencoder: NotesEncoder, spec: TaskSpec
) -> None:
    text = "The patient denies hemoptysis. She reports unintentional weight loss."
    pre = sencoder.precompute(splugin.collate([splugin.load([NoteRef(text.encode())], spec)], spec))
    assert pre["token_valid"].tolist() == [[True, True]]
    info = splugin.tokenizer()
    model = get_model(resolve_model_path(splugin.cfg.model_path))
    for i, sentence in enumerate(split_sentences(text)):
        ids = torch.tensor([[*info.prefix, *info.encode(sentence), *info.suffix]])
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
        expected = hidden[len(info.prefix) : hidden.shape[0] - len(info.suffix)].mean(0)
        torch.testing.assert_close(pre["token_states"][0, i], expected, atol=2e-5, rtol=1e-4)
    # Negation changes the state: the pooled states of the two statements differ.
    assert not torch.allclose(pre["token_states"][0, 0], pre["token_states"][0, 1], atol=1e-3)


def test_batched_precompute_equals_per_case(
    splugin: ClinicalNotesPlugin, sencoder: NotesEncoder, spec: TaskSpec
) -> None:
    items = [
        splugin.load([NoteRef(" ".join(SENTENCES).encode()), NoteRef(b"No fevers.")], spec),
        None,
        splugin.load([NoteRef(SENTENCES[1].encode())], spec),
    ]
    n_first = len(split_sentences(" ".join(SENTENCES))) + 1
    together = sencoder.precompute(splugin.collate(items, spec))
    for row, item in enumerate(items):
        alone = sencoder.precompute(splugin.collate([item], spec))
        n = int(alone["token_valid"].sum())
        assert int(together["token_valid"][row].sum()) == n
        torch.testing.assert_close(
            together["token_states"][row, :n], alone["token_states"][0, :n], atol=2e-5, rtol=1e-4
        )
    with torch.no_grad():
        out = sencoder(together)
    # n sentence states -> min(n, K) pooled tokens; one sentence -> one token; absent -> none.
    assert out.pad_mask[0].sum().item() == max(K - n_first, 0)
    assert out.pad_mask[1].all() and out.pad_mask[2].tolist() == [False] + [True] * (K - 1)


def test_finetune_top_layer_in_sentence_mode(splugin: ClinicalNotesPlugin, spec: TaskSpec) -> None:
    enc = ClinicalNotesPlugin(NotesConfig(unit="sentence", finetune_top_layers=1)).build_encoder(D_MODEL, spec)
    assert isinstance(enc, NotesEncoder)
    batch = splugin.collate([splugin.load([NoteRef(" ".join(SENTENCES).encode())], spec)], spec)
    pre = enc.precompute(batch)
    assert "hidden" in pre
    out = enc(pre)
    weights = torch.randn(out.tokens.shape, generator=torch.Generator().manual_seed(0))
    (out.tokens * weights).sum().backward()  # tokens.sum() is constant under the output LayerNorm
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.top_layers.parameters() if p.dim() > 1)


def test_piece_cache_lru_and_scope() -> None:
    cache = PieceCache(2)
    a, b, c = torch.zeros(3), torch.ones(3), torch.full((3,), 2.0)
    cache.put("fp32", (1, 2), a)
    cache.put("fp32", (3,), b)
    assert cache.get("int8", (1, 2)) is None  # another model / numeric mode never sees these states
    assert cache.get("fp32", (1, 2)) is a  # now most recently used
    cache.put("fp32", (4,), c)  # evicts (3,), the least recently used
    assert cache.get("fp32", (3,)) is None and cache.get("fp32", (4,)) is c and len(cache) == 2
    off = PieceCache(0)
    off.put("fp32", (1,), a)
    assert off.get("fp32", (1,)) is None and len(off) == 0


def test_cached_states_equal_computed_states(spec: TaskSpec) -> None:
    text = " ".join(SENTENCES).encode()
    cached = ClinicalNotesPlugin(NotesConfig(unit="sentence", sentence_cache_size=1000))
    uncached = ClinicalNotesPlugin(NotesConfig(unit="sentence", sentence_cache_size=0))
    enc_c, enc_u = cached.build_encoder(D_MODEL, spec), uncached.build_encoder(D_MODEL, spec)
    assert isinstance(enc_c, NotesEncoder) and isinstance(enc_u, NotesEncoder)
    batch = cached.collate([cached.load([NoteRef(text)], spec)], spec)
    store = piece_cache(1000)
    first = enc_c.precompute(batch)
    hits = store.hits
    second = enc_c.precompute(batch)
    assert store.hits == hits + int(batch["attention_mask"].any(-1).sum())  # every piece came from the cache
    assert torch.equal(first["token_states"], second["token_states"])
    torch.testing.assert_close(first["token_states"], enc_u.precompute(batch)["token_states"], atol=2e-5, rtol=1e-4)


def test_states_do_not_depend_on_the_batch_or_the_thread_count(spec: TaskSpec) -> None:
    # No cache: every state is computed, so equality shows the computation itself is independent of
    # the other cases in the batch and of the process's thread count (Ray workers run one thread).
    plugin = ClinicalNotesPlugin(NotesConfig(unit="sentence", sentence_cache_size=0))
    enc = plugin.build_encoder(D_MODEL, spec)
    assert isinstance(enc, NotesEncoder)
    first = plugin.load([NoteRef(" ".join(SENTENCES).encode())], spec)
    other = plugin.load([NoteRef(" ".join(reversed(SENTENCES)).encode()), NoteRef(b"Denies fevers.")], spec)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        together = enc.precompute(plugin.collate([other, first], spec))
        assert torch.get_num_threads() == 2  # restored after the one-thread section
        torch.set_num_threads(1)
        alone = enc.precompute(plugin.collate([first], spec))
    finally:
        torch.set_num_threads(threads)
    n = int(alone["token_valid"].sum())
    assert n > 0 and torch.equal(together["token_states"][1, :n], alone["token_states"][0, :n])

"""Notes encoder with the real MiniLM: precompute/forward contract, pooling masks, fine-tuning, int8, checkpoints."""

from __future__ import annotations

import io

import pytest
import torch
from mmclinic_clinical_notes.backbone import get_model, get_tokenizer
from mmclinic_clinical_notes.config import NotesConfig
from mmclinic_clinical_notes.encoder import NotesEncoder
from mmclinic_clinical_notes.plugin import ClinicalNotesPlugin
from notes_samples import D_MODEL, SENTENCES, K, long_note
from torch.nn.functional import cosine_similarity

from mmclinic.case import NoteRef
from mmclinic.errors import ModelError
from mmclinic.plugin_api import EncoderOutput, TaskSpec


def _zero_pad_stack(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """What a trainer does with per-case cached precompute output: pad every non-case axis with zeros."""
    out = {}
    for key in parts[0]:
        shape = [max(p[key].shape[d] for p in parts) for d in range(1, parts[0][key].dim())]
        stacked = torch.zeros(len(parts), *shape, dtype=parts[0][key].dtype)
        for i, p in enumerate(parts):
            stacked[(i, *[slice(0, s) for s in p[key].shape[1:]])] = p[key][0]
        out[key] = stacked
    return out


@pytest.fixture(scope="module")
def batch(plugin: ClinicalNotesPlugin, spec: TaskSpec, notes: list[NoteRef]) -> dict[str, torch.Tensor]:
    items = [plugin.load(notes, spec), None, plugin.load([NoteRef(b"cough")], spec), plugin.load([], spec)]
    return plugin.collate(items, spec)


def test_output_shape_and_masks(encoder: NotesEncoder, batch: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        out = encoder(batch)
    assert isinstance(out, EncoderOutput)
    assert out.tokens.shape == (4, K, D_MODEL) and out.pad_mask.shape == (4, K)
    assert torch.isfinite(out.tokens).all()
    assert not out.pad_mask[0].any()  # hundreds of tokens -> all K pooled tokens
    assert out.pad_mask[1].all() and out.pad_mask[3].all()  # absent cases fully masked ...
    assert (out.tokens[1] == 0).all() and (out.tokens[3] == 0).all()  # ... and carry nothing
    assert out.pad_mask[2].tolist() == [False] + [True] * (K - 1)  # "cough" is one token: at most one text token


def test_all_absent_batch(encoder: NotesEncoder, plugin: ClinicalNotesPlugin, spec: TaskSpec) -> None:
    with torch.no_grad():
        out = encoder(plugin.collate([None, None], spec))
    assert out.pad_mask.all() and torch.isfinite(out.tokens).all()


def test_precompute_is_deterministic_and_matches_forward(encoder: NotesEncoder, batch: dict[str, torch.Tensor]) -> None:
    first, second = encoder.precompute(batch), encoder.precompute(batch)
    assert set(first) == {"token_states", "token_valid", "token_type", "present"}
    assert not first["token_states"].requires_grad
    for key in first:
        assert torch.equal(first[key], second[key])
    # Each content token appears once: the owned-token count equals the notes' token count.
    assert first["token_valid"].sum(1).tolist() == [int(batch["keep_mask"][i].sum()) for i in range(4)]
    with torch.no_grad():
        direct, cached = encoder(batch), encoder(first)
    assert torch.equal(direct.tokens, cached.tokens)
    assert encoder.precompute(first) is first  # idempotent on a precomputed batch


def test_precompute_is_per_case_separable(
    encoder: NotesEncoder, plugin: ClinicalNotesPlugin, spec: TaskSpec, notes: list[NoteRef]
) -> None:
    items = [plugin.load(notes, spec), None, plugin.load([NoteRef(SENTENCES[3].encode())], spec)]
    whole = encoder.precompute(plugin.collate(items, spec))
    parts = [encoder.precompute(plugin.collate([it], spec)) for it in items]
    with torch.no_grad():
        a, b = encoder(whole), encoder(_zero_pad_stack(parts))
    torch.testing.assert_close(a.tokens, b.tokens, atol=1e-5, rtol=1e-4)
    assert torch.equal(a.pad_mask, b.pad_mask)


def test_token_states_are_the_raw_model_hidden_states(
    encoder: NotesEncoder, plugin: ClinicalNotesPlugin, spec: TaskSpec
) -> None:
    text = SENTENCES[1]
    pre = encoder.precompute(plugin.collate([plugin.load([NoteRef(text.encode())], spec)], spec))
    tok = get_tokenizer(encoder.model_path).tokenizer
    with torch.no_grad():
        ref = get_model(encoder.model_path)(**tok(text, return_tensors="pt")).last_hidden_state[0, 1:-1]
    torch.testing.assert_close(pre["token_states"][0, : ref.shape[0]], ref, atol=1e-5, rtol=1e-4)


def test_note_type_embedding_changes_tokens(encoder: NotesEncoder, plugin: ClinicalNotesPlugin, spec: TaskSpec) -> None:
    data = SENTENCES[0].encode()
    batch = plugin.collate([plugin.load([NoteRef(data, note_type=t)], spec) for t in ("radiology_report", "x")], spec)
    trained = NotesEncoder(encoder.config, D_MODEL, K).eval()
    trained.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        assert torch.allclose(trained(batch).tokens[0], trained(batch).tokens[1])  # zero-initialised: no effect yet
        trained.type_embedding.weight.normal_()
        out = trained(batch).tokens
    assert not torch.allclose(out[0], out[1])


def test_finetune_top_layers(encoder: NotesEncoder, batch: dict[str, torch.Tensor], spec: TaskSpec) -> None:
    cfg = NotesConfig(unit="window", window_length=64, window_stride=40, finetune_top_layers=2)
    tuned = ClinicalNotesPlugin(cfg).build_encoder(D_MODEL, spec)
    assert isinstance(tuned, NotesEncoder) and len(tuned.top_layers) == 2
    # Same pooling weights as the frozen encoder: with untouched top layers the outputs agree.
    missing, unexpected = tuned.load_state_dict(encoder.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("top_layers.") for k in missing)
    tuned.eval()
    pre = tuned.precompute(batch)
    assert pre["hidden"].shape[:3] == batch["input_ids"].shape and not pre["hidden"].requires_grad
    out = tuned(pre)
    with torch.no_grad():
        torch.testing.assert_close(out.tokens, encoder(batch).tokens, atol=1e-4, rtol=1e-4)
    # Not tokens.sum(): the output LayerNorm makes that sum constant, so its gradient is float noise.
    weights = torch.randn(out.tokens.shape, generator=torch.Generator().manual_seed(0))
    (out.tokens * weights).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tuned.top_layers.parameters() if p.dim() > 1)
    frozen = get_model(tuned.model_path)
    assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())
    assert set(tuned.state_dict()) - set(encoder.state_dict()) == {
        k for k in tuned.state_dict() if k.startswith("top_layers.")
    }


def test_checkpoint_holds_only_trainable_part_and_checks_backbone(encoder: NotesEncoder) -> None:
    state = encoder.state_dict()
    n_values = sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor))
    assert n_values < 1_000_000  # MiniLM has 22M parameters: they are not in the checkpoint
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fresh = NotesEncoder(encoder.config, D_MODEL, K)
    fresh.load_state_dict(torch.load(buf, weights_only=False))
    assert torch.equal(fresh.queries, encoder.queries)
    bad = dict(state)
    bad["_extra_state"] = {"backbone_sha256": "0" * 64}
    with pytest.raises(ModelError) as exc:
        fresh.load_state_dict(bad)
    assert exc.value.reason == "model.backbone_mismatch"
    # Pooling trained over token states (this fixture) is refused by a sentence-unit encoder.
    sentence = NotesEncoder(encoder.config.model_copy(update={"unit": "sentence"}), D_MODEL, K)
    with pytest.raises(ModelError) as exc:
        sentence.load_state_dict(state)
    assert exc.value.reason == "model.notes_unit_mismatch"
    legacy = dict(state)
    legacy["_extra_state"] = {"backbone_sha256": encoder.backbone_sha256, "finetune_top_layers": 0}
    fresh.load_state_dict(legacy)  # written before the option existed: token states, accepted by unit=window


def test_int8_agrees_with_fp32(encoder: NotesEncoder, spec: TaskSpec) -> None:
    cfg8 = NotesConfig(unit="window", window_length=64, window_stride=40, quantize_int8=True)
    plugin8 = ClinicalNotesPlugin(cfg8)
    enc8 = plugin8.build_encoder(D_MODEL, spec)
    enc8.load_state_dict(encoder.state_dict())
    enc8.eval()
    items = [plugin8.load([NoteRef(s.encode())], spec) for s in SENTENCES] + [
        plugin8.load([NoteRef(long_note(12))], spec)
    ]
    batch = plugin8.collate(items, spec)
    with torch.no_grad():
        fp32, int8 = encoder(batch), enc8(batch)
    dynamic = torch.ao.nn.quantized.dynamic.Linear  # the full-range subclass too (CPUs with VNNI)
    assert any(isinstance(m, dynamic) for m in get_model(enc8.model_path, "int8").modules())
    assert not torch.equal(fp32.extras["mean_state"], int8.extras["mean_state"])  # really a different path
    mean_cos = cosine_similarity(fp32.extras["mean_state"], int8.extras["mean_state"], dim=-1).mean()
    valid = ~fp32.pad_mask
    token_cos = cosine_similarity(fp32.tokens[valid], int8.tokens[valid], dim=-1).mean()
    print(f"int8 agreement: mean-pooled {mean_cos:.4f}, pooled tokens {token_cos:.4f}")
    # Full-range activations need VNNI (int32 accumulation); without it PyTorch halves the activation
    # range and agreement drops to about 0.97-0.98 (measured 0.978 / 0.988 on a CPU without VNNI).
    bound = 0.99 if torch.cpu._is_vnni_supported() else 0.97
    assert mean_cos >= bound, f"mean-pooled cosine {mean_cos:.4f}"
    assert token_cos >= bound, f"pooled-token cosine {token_cos:.4f}"

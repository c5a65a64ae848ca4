"""tabular-records encoder: feature tokens, missing embedding, normalisation buffers, checkpoints."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from mmclinic_tabular_records.encoder import TabularEncoder
from mmclinic_tabular_records.plugin import TabularRecordsPlugin
from tabular_samples import CSV_ROW, NAMES, SCHEMA, SPEC, row

from mmclinic.errors import ModelError
from mmclinic.plugin_api import FeatureSpec, TaskSpec

PLUGIN = TabularRecordsPlugin()
D = 16


def _encoder(seed: int = 0) -> TabularEncoder:
    torch.manual_seed(seed)
    return PLUGIN.build_encoder(D, SPEC)


def _batch(*records: dict[str, object] | None) -> dict[str, torch.Tensor]:
    return PLUGIN.collate([None if r is None else PLUGIN.load(r, SPEC) for r in records], SPEC)


def test_one_token_per_feature_and_absent_case_masked() -> None:
    batch = _batch(CSV_ROW, None)
    assert batch["num"].shape == (2, len(NAMES)) and batch["present"].tolist() == [True, False]
    out = _encoder()(batch)
    assert out.tokens.shape == (2, len(NAMES), D)
    assert not out.pad_mask[0].any()  # missing values are tokens, not padding
    assert out.pad_mask[1].all() and (out.tokens[1] == 0).all()


def test_missing_value_uses_the_learned_missing_embedding() -> None:
    enc = _encoder()
    i = NAMES.index("cea")
    out = enc(_batch(row(cea=""), row(cea="80"), row(cea="3")))
    expected = enc.missing_embedding[i] + enc.feature_embedding[i]
    torch.testing.assert_close(out.tokens[0, i], expected)
    assert not torch.allclose(out.tokens[1, i], expected)
    assert not torch.allclose(out.tokens[1, i], out.tokens[2, i])  # the value matters when present
    # Gradient reaches the missing embedding of exactly the missing feature.
    out.tokens[0].sum().backward()
    assert enc.missing_embedding.grad is not None
    touched = (enc.missing_embedding.grad.abs().sum(-1) > 0).tolist()
    assert touched == [n in ("cea", "crp") for n in NAMES]  # crp is empty in CSV_ROW


def test_numeric_token_is_affine_in_normalised_value() -> None:
    enc = _encoder()
    i = NAMES.index("age")
    out = enc(_batch(row(age="40"), row(age="60"), row(age="80")))
    step1 = out.tokens[1, i] - out.tokens[0, i]
    step2 = out.tokens[2, i] - out.tokens[1, i]
    torch.testing.assert_close(step1, step2)
    torch.testing.assert_close(step1, 20 / enc.norm_std[i] * enc.num_weight[i])


def test_categorical_tokens_differ_by_category() -> None:
    enc = _encoder()
    i = NAMES.index("smoking_status")
    out = enc(_batch(row(smoking_status="never"), row(smoking_status="current"), row(smoking_status="never")))
    assert not torch.allclose(out.tokens[0, i], out.tokens[1, i])
    torch.testing.assert_close(out.tokens[0, i], out.tokens[2, i])


def test_fit_normalization_and_state_dict_round_trip() -> None:
    rng = np.random.default_rng(0)
    ages = rng.uniform(40, 80, size=50)
    crp = rng.uniform(0, 20, size=50)
    records = [
        row(age=f"{a:.2f}", crp=f"{c:.2f}" if k % 5 else "") for k, (a, c) in enumerate(zip(ages, crp, strict=True))
    ]
    batches = [_batch(*records[:20], None), _batch(*records[20:])]
    enc = _encoder()
    assert not enc.norm_fitted
    counts = enc.fit_normalization(batches)
    assert counts["age"] == 50 and counts["crp"] == 40 and "sex" not in counts
    i_age, i_crp = NAMES.index("age"), NAMES.index("crp")
    ages_used = np.array([float(f"{a:.2f}") for a in ages])
    crp_used = np.array([float(f"{c:.2f}") for k, c in enumerate(crp) if k % 5])
    assert enc.norm_mean[i_age].item() == pytest.approx(ages_used.mean(), rel=1e-5)
    assert enc.norm_std[i_age].item() == pytest.approx(ages_used.std(), rel=1e-4)
    assert enc.norm_mean[i_crp].item() == pytest.approx(crp_used.mean(), rel=1e-5)
    assert enc.norm_std[NAMES.index("pack_years")].item() == 1.0  # constant "40" in every row -> std 1, not 0
    # Buffers are saved: a fresh encoder loaded from the checkpoint normalises identically.
    buf = io.BytesIO()
    torch.save(enc.state_dict(), buf)
    buf.seek(0)
    fresh = _encoder(seed=1)
    assert not torch.equal(fresh.norm_mean, enc.norm_mean)
    fresh.load_state_dict(torch.load(buf, weights_only=False))
    assert bool(fresh.norm_fitted)
    assert torch.equal(fresh.norm_mean, enc.norm_mean) and torch.equal(fresh.norm_std, enc.norm_std)
    batch = _batch(CSV_ROW)
    torch.testing.assert_close(fresh(batch).tokens, enc(batch).tokens)


def test_checkpoint_for_another_schema_is_rejected() -> None:
    other = TaskSpec(name="t", required_modalities=(), optional_modalities=(), labels=(),
                     tabular_schema=(*SCHEMA[:-1], FeatureSpec("ldh", "numeric")))  # fmt: skip
    with pytest.raises(ModelError) as exc:
        PLUGIN.build_encoder(D, other).load_state_dict(_encoder().state_dict())
    assert exc.value.reason == "model.schema_mismatch"


def test_unfitted_prior_comes_from_declared_range() -> None:
    enc = _encoder()
    i = NAMES.index("age")
    assert enc.norm_mean[i].item() == 60.0 and enc.norm_std[i].item() == 30.0


def test_log_scale_feature_is_normalised_and_embedded_in_log_space() -> None:
    schema = tuple(FeatureSpec(f.name, f.type, f.unit, f.min, f.max, f.required, f.categories, f.description,
                               "log" if f.name == "cea" else "linear") for f in SCHEMA)  # fmt: skip
    spec = TaskSpec(name=SPEC.name, required_modalities=(), optional_modalities=(), labels=(), tabular_schema=schema)
    torch.manual_seed(0)
    enc = PLUGIN.build_encoder(D, spec)
    values = [1.0, 10.0, 100.0, 0.0]
    batch = PLUGIN.collate([PLUGIN.load(row(cea=str(v)), spec) for v in values], spec)
    enc.fit_normalization([batch])
    i = NAMES.index("cea")
    logs = np.log(np.maximum(values, 1e-3))
    assert enc.norm_mean[i].item() == pytest.approx(logs.mean(), rel=1e-5)
    assert enc.norm_std[i].item() == pytest.approx(logs.std(), rel=1e-4)
    out = enc(batch)
    # Equal ratios give equal token steps (1 → 10 → 100), and a zero stays finite.
    torch.testing.assert_close(out.tokens[1, i] - out.tokens[0, i], out.tokens[2, i] - out.tokens[1, i])
    assert torch.isfinite(out.tokens).all()

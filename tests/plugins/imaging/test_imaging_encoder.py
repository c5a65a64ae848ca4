"""Imaging plugin: collate and the MONAI encoder — shapes, padding-mask semantics, independence, size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from imaging_dicom_factory import SeriesGeometry, folder_ref, hu_volume, make_plugin, write_ct_series

from mmclinic.errors import ConfigError
from mmclinic.model.frozen import frozen_outputs, replay_for
from mmclinic.plugin_api import EncoderOutput, ImagingSpec, ModalityInput, TaskSpec

# A smaller grid than the task default keeps the CPU forward passes in these tests quick.
SPEC = TaskSpec("enc-test", ("imaging",), (), ("x",), imaging=ImagingSpec(size=(32, 32, 32)))


def _item(value: float, spec: TaskSpec = SPEC) -> ModalityInput:
    image = np.full((1, *spec.imaging.size), value, dtype=np.float32)
    return ModalityInput(modality="imaging", data={"image": image}, fingerprint={})


def test_collate_zeros_where_absent() -> None:
    plugin = make_plugin()
    batch = plugin.collate([_item(0.5), None, _item(0.25)], SPEC)
    assert batch["image"].shape == (3, 1, 32, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["present"].tolist() == [True, False, True]
    assert float(batch["image"][1].abs().sum()) == 0.0
    assert float(batch["image"][0].mean()) == 0.5 and float(batch["image"][2].mean()) == 0.25
    with pytest.raises(ConfigError):
        plugin.collate([ModalityInput("imaging", {"image": np.zeros((1, 8, 8, 8), np.float32)}, {})], SPEC)


def test_encoder_shapes_mask_and_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    geom = SeriesGeometry(n_slices=12)
    write_ct_series(tmp_path, geom, volume=hu_volume(geom, blob_at=(16, 16, 6)))
    plugin = make_plugin()
    real = plugin.load(folder_ref(tmp_path), SPEC)
    encoder = plugin.build_encoder(32, SPEC).eval()
    n_params = sum(p.numel() for p in encoder.parameters())
    assert 100_000 < n_params < 1_000_000, n_params  # "a few hundred K": trainable on a CPU
    batch = plugin.collate([real, None, _item(0.3)], SPEC)
    with torch.no_grad():
        out = encoder(batch)
    assert isinstance(out, EncoderOutput)
    assert out.tokens.shape == (3, 9, 32)  # 2×2×2 regions + the lesion token
    assert out.pad_mask.dtype == torch.bool and out.pad_mask.shape == (3, 9)
    assert out.pad_mask[1].all() and not out.pad_mask[0].any() and not out.pad_mask[2].any()
    assert float(out.tokens[1].abs().sum()) == 0.0  # absent case contributes nothing
    assert torch.isfinite(out.tokens).all()
    logits = out.extras["lesion_logits"]
    assert logits.shape == (3, 1, 32, 32, 32)
    # Per-case normalisation: a case's outputs do not depend on what else is in the batch.
    with torch.no_grad():
        alone = encoder(plugin.collate([real], SPEC))
    assert torch.allclose(alone.tokens[0], out.tokens[0], atol=1e-5)
    assert torch.allclose(alone.extras["lesion_logits"][0], logits[0], atol=1e-5)
    # Different inputs, different tokens (the encoder is not constant).
    assert not torch.allclose(out.tokens[0], out.tokens[2])


def test_encoder_trains_and_token_grid_is_configurable() -> None:
    torch.manual_seed(0)
    spec = TaskSpec("enc-test", ("imaging",), (), ("x",), imaging=ImagingSpec(size=(64, 64, 32)))
    plugin = make_plugin(token_grid=(4, 4, 2))
    encoder = plugin.build_encoder(16, spec)
    batch = plugin.collate([_item(0.2, spec), None], spec)
    out = encoder(batch)
    assert out.tokens.shape == (2, 33, 16)
    loss = out.tokens[0].pow(2).mean() + out.extras["lesion_logits"][0].mean()
    loss.backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert float(encoder.pos.grad.abs().sum()) > 0  # type: ignore[union-attr]


def test_lesion_statistics_look_where_the_lesion_map_points() -> None:
    from mmclinic_imaging_dicom.encoder import lesion_statistics

    image = torch.full((2, 1, 16, 16, 8), 0.1)
    image[:, :, 4:8, 4:8, 2:6] = 0.8  # a dense lesion in both cases
    feats = torch.zeros(2, 3, 16, 16, 8)
    feats[:, 1, 4:8, 4:8, 2:6] = 5.0  # a decoder channel that fires on the lesion
    logits = torch.full((2, 1, 16, 16, 8), -20.0)
    logits[0, :, 4:8, 4:8, 2:6] = 20.0  # case 0: the map finds the lesion
    logits[1, :, 4:6, 4:6, 2:4] = 20.0  # case 1: it finds only a corner of it (smaller volume)
    stats = lesion_statistics(logits, image, feats)
    assert stats.shape == (2, 5 + 3)
    top, _, log_volume, mean, spread = stats[:, :5].T
    assert torch.allclose(top, torch.tensor([2.0, 2.0]))
    assert torch.allclose(mean, torch.tensor([0.8, 0.8]), atol=1e-4)  # pooled inside the lesion only
    assert float(spread.max()) < 1e-2
    assert float(log_volume[0]) > float(log_volume[1]) + 1.0  # 64 vs 8 voxels
    assert torch.allclose(stats[:, 5 + 1], torch.tensor([5.0, 5.0]), atol=1e-4)
    # A case whose map finds nothing: low top logit, no volume.
    empty = lesion_statistics(torch.full((1, 1, 16, 16, 8), -20.0), image[:1], feats[:1])
    assert float(empty[0, 0]) == -2.0 and float(empty[0, 2]) < 1e-3


def test_frozen_trunk_replay_trains_the_head_only() -> None:
    torch.manual_seed(0)
    plugin = make_plugin()
    encoder = plugin.build_encoder(16, SPEC)
    batch = plugin.collate([_item(0.2), _item(0.6)], SPEC)
    with torch.no_grad():
        cached = frozen_outputs(encoder, batch)
        direct = encoder(batch)
    assert set(cached) >= {"regions", "lesion_stats", "extra.lesion_logits", "present"}
    replay = replay_for(encoder)
    out = replay(cached)
    assert torch.allclose(out.tokens, direct.tokens, atol=1e-6)
    assert torch.equal(out.extras["lesion_logits"], direct.extras["lesion_logits"])
    out.tokens.pow(2).mean().backward()
    assert encoder.lesion_mlp[1].weight.grad is not None  # the head learns on cached trunk outputs
    assert all(p.grad is None for p in encoder.unet.parameters())  # the trunk is not touched


def test_output_layer_equals_the_convolution_and_ignores_the_thread_count() -> None:
    from mmclinic_imaging_dicom.encoder import channel_mix

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(8, 1, 1)
    x = torch.randn(2, 8, 64, 64, 32)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.no_grad():
                outs.append(channel_mix(conv, x))
    finally:
        torch.set_num_threads(threads)
    # Bit-identical across thread counts (the Ray-vs-local guarantee rests on it) ...
    assert torch.equal(outs[0], outs[1])
    # ... and the same layer as the convolution it replaces, up to rounding.
    with torch.no_grad():
        torch.testing.assert_close(outs[0], conv(x), atol=1e-5, rtol=1e-5)


def test_isolate_describes_one_lesion_with_the_others_read_as_background() -> None:
    """``isolate``: nothing suppressed gives the case's own tokens; each row's lesion token sees one lesion."""
    torch.manual_seed(0)
    plugin = make_plugin()
    encoder = plugin.build_encoder(32, SPEC).eval()
    image = torch.full((1, 1, 32, 32, 32), 0.1)
    image[..., 4:8, 4:8, 4:8] = 0.9
    image[..., 20:23, 20:23, 20:23] = 0.6
    batch = {"image": image, "present": torch.tensor([True])}
    with torch.no_grad():
        whole = encoder(batch)
        a = torch.zeros(1, 1, 32, 32, 32, dtype=torch.bool)
        a[..., 4:8, 4:8, 4:8] = True
        b = torch.zeros_like(a)
        b[..., 20:23, 20:23, 20:23] = True
        out = encoder.isolate(batch, torch.cat([torch.zeros_like(a), b, a]))
        trunk = encoder.trunk(batch)
    assert out.tokens.shape == (3, 9, 32) and not out.pad_mask.any()
    assert torch.allclose(out.tokens[0], whole.tokens[0], atol=1e-5)  # nothing suppressed: the case itself
    # The region tokens are the case's in every row; only the lesion token changes.
    assert torch.allclose(out.tokens[1:, :8], whole.tokens.expand(2, -1, -1)[:, :8], atol=1e-5)
    assert not torch.allclose(out.tokens[1, 8], out.tokens[2, 8]) and not torch.allclose(
        out.tokens[2, 8], out.tokens[0, 8]
    )
    with pytest.raises(ValueError):
        encoder.isolate({"image": image.expand(2, -1, -1, -1, -1), "present": torch.tensor([True, True])}, a)
    assert torch.isfinite(trunk["lesion_stats"]).all()


def test_detector_starts_as_the_lesion_map_with_the_prior_folded_in() -> None:
    """``add_detector``: a copy of the U-Net whose logits equal the lesion map's plus the shift, until trained."""
    torch.manual_seed(0)
    plugin = make_plugin()
    encoder = plugin.build_encoder(16, SPEC).eval()
    batch = plugin.collate([_item(0.2), _item(0.7)], SPEC)
    with pytest.raises(ValueError, match="no detector"):
        encoder.detect(batch["image"])
    assert "extra.detection_logits" not in encoder.trunk(batch)
    detector = encoder.add_detector(-6.0)
    with torch.no_grad():
        trunk = encoder.trunk(batch)
    torch.testing.assert_close(trunk["extra.detection_logits"], trunk["extra.lesion_logits"] - 6.0)
    assert encoder(batch).extras.keys() == {"lesion_logits", "detection_logits"}
    # Its own weights: training it leaves the lesion map (and so the lesion token) alone.
    encoder.detect(batch["image"]).mean().backward()
    assert all(p.grad is None for p in encoder.unet.parameters())
    assert any(p.grad is not None for p in detector.parameters())
    with pytest.raises(ValueError, match="already has a detector"):
        encoder.add_detector()

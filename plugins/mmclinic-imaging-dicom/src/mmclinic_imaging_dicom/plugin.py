"""The ``ct-dicom`` modality plugin: StudyRef → chosen CT series → model-ready volume, tokens and lesion map."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from mmclinic.case import IMAGING, StudyRef, sha256_bytes, stable_hash
from mmclinic.errors import ConfigError, InputError
from mmclinic.logs import event
from mmclinic.plugin_api import ModalityInput, ModalityPlugin, TaskSpec
from mmclinic_imaging_dicom import __version__
from mmclinic_imaging_dicom import reasons as R
from mmclinic_imaging_dicom.config import CtDicomConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from mmclinic_imaging_dicom.pixels import Volume
    from mmclinic_imaging_dicom.selection import SeriesDecision

log = logging.getLogger(__name__)


def _as_study_ref(ref: Any) -> StudyRef:
    if isinstance(ref, StudyRef):
        return ref
    if isinstance(ref, str | os.PathLike):
        return StudyRef(folder=Path(ref))
    raise InputError(R.BAD_REFERENCE, f"expected a StudyRef or a folder path, got {type(ref).__name__}")


def series_fingerprint(file_sha256: dict[str, str]) -> str:
    """One SHA-256 over the series: sorted "SOP Instance UID + file SHA-256" lines (order-independent)."""
    lines = "".join(f"{uid} {digest}\n" for uid, digest in sorted(file_sha256.items()))
    return sha256_bytes(lines.encode())


class CtDicomPlugin(ModalityPlugin):
    """Reads a CT study from DICOM files (see the package README for rules and reason codes)."""

    name: ClassVar[str] = "ct-dicom"
    modality: ClassVar[str] = IMAGING
    version: ClassVar[str] = __version__
    Config: ClassVar[type[BaseModel]] = CtDicomConfig

    @property
    def cfg(self) -> CtDicomConfig:
        assert isinstance(self.config, CtDicomConfig)
        return self.config

    def _select(self, ref: Any, spec: TaskSpec) -> tuple[SeriesDecision, dict[str, Any]]:
        from mmclinic_imaging_dicom.headers import scan_study
        from mmclinic_imaging_dicom.selection import choose, evaluate

        study = _as_study_ref(ref)
        scan = scan_study(study, self.cfg.max_files)
        target_z = float(spec.imaging.spacing_mm[2])
        decisions = evaluate(scan, self.cfg, target_z)
        summary: dict[str, Any] = {
            "files": scan.files_found,
            "skipped_files": scan.skipped_files,
            "unreadable_files": len(scan.unreadable),
            "series": [d.summary() for d in decisions],
        }
        try:
            chosen = choose(scan, decisions, self.cfg, target_z)
        except InputError as exc:
            event(log, "imaging.rejected", level=logging.WARNING, reason=exc.reason, series=len(decisions))
            raise
        summary["chosen_series"] = chosen.series.uid
        return chosen, summary

    def select_series(self, ref: Any, spec: TaskSpec) -> dict[str, Any]:
        """Headers only (no pixel is decoded): the selection summary, or ``InputError`` when nothing qualifies."""
        return self._select(ref, spec)[1]

    def voxel_to_patient(self, meta: dict[str, Any], ijk: Sequence[float]) -> tuple[float, float, float]:
        """Patient LPS mm of a voxel of the model's input array (see ``coords.voxel_to_patient_mm``)."""
        from mmclinic_imaging_dicom.coords import voxel_to_patient_mm

        return voxel_to_patient_mm(meta, ijk)

    def patient_to_voxel(self, meta: dict[str, Any], xyz: Sequence[float]) -> tuple[float, float, float]:
        """Fractional voxel index of a patient LPS mm position (see ``coords.patient_mm_to_voxel``)."""
        from mmclinic_imaging_dicom.coords import patient_mm_to_voxel

        return patient_mm_to_voxel(meta, xyz)

    def load_volume(self, ref: Any, spec: TaskSpec) -> tuple[Volume, dict[str, Any]]:
        """Header scan, selection and pixel decode (no resampling): the volume and the selection summary."""
        from mmclinic_imaging_dicom.pixels import read_volume

        chosen, summary = self._select(ref, spec)
        decisions = summary["series"]
        assert chosen.geometry is not None
        try:
            volume = read_volume(chosen.geometry, self.cfg.decoding_plugins, self.cfg.io_threads)
        except InputError as exc:
            event(log, "imaging.rejected", level=logging.WARNING, reason=exc.reason, series=len(decisions))
            raise
        except OSError as exc:
            raise InputError(R.UNREADABLE, f"{type(exc).__name__}: {exc.strerror or exc}") from exc
        return volume, summary

    def load(self, ref: Any, spec: TaskSpec) -> ModalityInput:
        """Load, validate, select, decode and preprocess one study; ``InputError`` with a reason on bad input."""
        from mmclinic_imaging_dicom.preprocess import preprocess, preprocessing_params

        t0 = time.perf_counter()
        volume, summary = self.load_volume(ref, spec)
        t1 = time.perf_counter()
        image, affine_lps = preprocess(volume, spec.imaging, self.cfg.antialias, self.cfg.preprocess_threads)
        t2 = time.perf_counter()
        geom = volume.geometry
        first = geom.slices[0].instance
        params = preprocessing_params(spec.imaging, self.cfg.antialias)
        fingerprint = series_fingerprint(volume.file_sha256)
        summary.update(
            {
                "source_shape": list(geom.shape),
                "source_spacing_mm": [geom.pixel_spacing[1], geom.pixel_spacing[0], round(geom.slice_step_mm, 4)],
                "slice_thickness_mm": round(geom.thickness_mm, 4),
                "decoders": volume.decoders,
                "shape": list(image.shape[1:]),
                "timings_ms": {"load": round((t1 - t0) * 1e3, 1), "preprocess": round((t2 - t1) * 1e3, 1)},
            }
        )
        meta = {
            "affine_lps": affine_lps.tolist(),
            "spacing_mm": list(spec.imaging.spacing_mm),
            "shape": list(image.shape[1:]),
            "source_affine_lps": geom.affine_lps.tolist(),
            "source_shape": list(geom.shape),
            "source_slices": [[s.instance.sop_instance_uid, s.frame + 1] for s in geom.slices],
            "series_instance_uid": chosen_uid(summary),
            "study_instance_uid": first.study_uid,
            "frame_of_reference_uid": first.frame_of_reference_uid,
            "sop_class_uid": first.sop_class_uid,
            "preprocessing": params,
            "preprocessing_hash": stable_hash({"plugin": self.name, "version": self.version, **params}),
        }
        event(
            log,
            "imaging.loaded",
            slices=len(geom.slices),
            series=len(summary["series"]),
            fingerprint=fingerprint[:12],
            load_ms=summary["timings_ms"]["load"],
            preprocess_ms=summary["timings_ms"]["preprocess"],
        )
        return ModalityInput(
            modality=IMAGING,
            data={"image": image},
            fingerprint={"ct_series": fingerprint, "ct_series_uid": chosen_uid(summary)},
            summary=summary,
            meta=meta,
        )

    def collate(self, items: Sequence[ModalityInput | None], spec: TaskSpec) -> dict[str, torch.Tensor]:
        """``image`` [B,1,X,Y,Z] float32 (zeros where absent) and ``present`` bool [B]."""
        import torch

        size = tuple(spec.imaging.size)
        image = torch.zeros((len(items), 1, *size), dtype=torch.float32)
        present = torch.zeros(len(items), dtype=torch.bool)
        for b, item in enumerate(items):
            if item is None:
                continue
            arr = torch.as_tensor(item.data["image"], dtype=torch.float32)
            if tuple(arr.shape) != (1, *size):
                raise ConfigError("imaging.shape_mismatch", f"item {b} has shape {tuple(arr.shape)}, spec wants {size}")
            image[b] = arr
            present[b] = True
        return {"image": image, "present": present}

    def build_encoder(self, d_model: int, spec: TaskSpec) -> nn.Module:
        """A small MONAI 3D U-Net encoder (see ``CtEncoder``)."""
        from mmclinic_imaging_dicom.encoder import CtEncoder

        return CtEncoder(d_model, self.cfg.encoder_features, self.cfg.token_grid)


def chosen_uid(summary: dict[str, Any]) -> str:
    """The SeriesInstanceUID the summary says was chosen."""
    return str(summary.get("chosen_series", ""))

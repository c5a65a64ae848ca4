"""Sample note text and encoder set-up for the clinical-notes tests (synthetic, no real patient data)."""

from __future__ import annotations

from typing import Any

D_MODEL = 32  # fusion width used by the tests
K = 8  # pooled text tokens per case (TaskSpec.max_text_tokens)

SENTENCES = (
    "Patient presents with a persistent cough and 5 kg weight loss over three months.",
    "CT chest shows a 14 mm spiculated nodule in the right upper lobe without lymphadenopathy.",
    "History of COPD and 40 pack-years of smoking; quit five years ago.",
    "CEA mildly elevated at 6.1 ng/mL; CRP within normal limits.",
    "Recommend PET-CT and multidisciplinary tumour board review.",
)


def long_note(n_sentences: int = 24) -> bytes:
    """A note well over one window (about 18 tokens per sentence)."""
    return " ".join(SENTENCES[i % len(SENTENCES)] for i in range(n_sentences)).encode()


def seeded_encoder(plugin: Any, spec: Any) -> Any:
    """The plugin's NotesEncoder at width D_MODEL, seeded (same pooling weights every time), in eval mode."""
    import torch
    from mmclinic_clinical_notes.encoder import NotesEncoder

    torch.manual_seed(0)
    enc = plugin.build_encoder(D_MODEL, spec)
    assert isinstance(enc, NotesEncoder)
    return enc.eval()

"""mmclinic clinical-notes modality plugin (entry point: ``mmclinic_clinical_notes.plugin:ClinicalNotesPlugin``)."""

__version__ = "0.2.0"

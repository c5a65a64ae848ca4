"""PACS integration: DICOM listener, study-complete trigger, TID 1500 SR / SEG writer and the C-STORE outbox."""

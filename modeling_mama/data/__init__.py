"""Data tooling: turning folders of DICOM files and published datasets into what the model reads."""

"""Data tooling: dataset converters (`data.converters`), the synthetic mammography generator
(`data.synthetic`) and the header scan of DICOM folders (`data.dicom_scan`). Nothing here travels with
a saved model folder; the command lines are in `data_scripts/` and `examples/`."""

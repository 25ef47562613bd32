"""Data tooling: dataset converters (`data.converters`) and the synthetic mammography generator
(`data.synthetic`). Nothing here travels with a saved model folder; the command lines are in
`data_scripts/`."""

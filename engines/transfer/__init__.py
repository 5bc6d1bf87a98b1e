"""The transfer matrix (§4.2, Tables 2 and 4): does one model's adversarial set fool another?

`request` holds what fixes a matrix (and the per-model `NAME=VALUE` parsing both front ends use), `matrix` the
result with its Wilson intervals, `operation` is `blindspot transfer` and the Transfer screen's computation,
`store` writes and reads a matrix's folder, `cells` finds a cell's examples for the workbench.
"""

"""Certified lower bounds and exact minima of the adversarial distortion (issue 25).

`network` turns a model into a chain of bounded operations, `concretize` bounds a linear function over
the L2 ball intersected with the pixel box, `relax` holds the activations' linear relaxations, `crown`
and `ibp` propagate bounds, `exact` solves the affine models' minimum exactly, `radius` bisects the
certified radius, and `operation` is `blindspot certify`.
"""

"""The DRE's integer side: the parameter set shared with the RTL and its bit-exact reference.

``config`` (:class:`DREConfig`, the elaboration parameters), ``quant`` (the quantisation shared
with the float model), ``select`` / ``tokens`` (retrieval v1 / v2), ``cluster`` (clustering),
``top`` (the whole DRE, :class:`DRERef`, and the integer stream from the golden model), ``ref``
(one import for all of them).  The float golden model is the rest of ``model/``.
"""

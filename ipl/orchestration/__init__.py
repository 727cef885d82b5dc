"""Runners of the paper's experiments: they train and evaluate, so they sit above both.

:mod:`.fig5` reproduces Fig. 5 (real photos translated by five adapted
models per domain, and the supplementary table). Nothing below this
package imports it. (The Table-1 runner, :mod:`ipl.table1`, is the same
kind of module and belongs here too.)
"""

"""Concept masks for training: Segment Anything (``sam``), flat-colour segmentation and the choice of the concept's
mask (``segmenter``), and mask clean-up (``cleanup``). Import the submodules by name; this package imports nothing.
"""

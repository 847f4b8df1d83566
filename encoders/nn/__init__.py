"""The torch modules: the sequence model (`model`), the text fusion (`fusion`) and the MiniLM text encoder (`text`).

Each is imported from its own module, so loading the sequence model does not
load `transformers`' MiniLM code.
"""

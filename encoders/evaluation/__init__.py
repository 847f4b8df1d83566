"""Offline evaluation: full-ranking metrics of the encoder and its baselines (`evaluate`),
the next-action head (`actions`) and the published figures we compare with (`published`)."""

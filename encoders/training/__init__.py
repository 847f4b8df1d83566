"""Offline training: the sequence encoder (`train`), the text fusion (`fusion`), fine-tuning on a newer
slice (`finetune`) and the training curve (`plots`).  Nothing in the worker imports this package."""

"""TransferKit: adapt pretrained encoders with continued MLM pretraining, then finetune them for classification."""

__version__ = "0.1.0"

"""shopee-fastai: sort marketplace product photos into their product group with fastai and timm."""

__version__ = "0.1.0"

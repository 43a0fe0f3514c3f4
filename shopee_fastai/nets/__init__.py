"""Networks: the hand CNN, timm bodies and where to cut them, and where pretrained weights come from."""

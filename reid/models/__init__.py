"""Backbones (ResNet, OSNet, HRNet, ViT) and shared heads (BNNeck) for the ReID methods and teachers."""

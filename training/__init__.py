"""Training commands of the product's models (segmentation: ``python -m training.train_segmentation``)."""

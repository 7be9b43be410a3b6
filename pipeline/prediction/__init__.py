"""Using a trained model: ``tlops predict`` over a batch of images (models.py chooses the model, batch.py
reads, checks and classifies the images and writes the predictions)."""

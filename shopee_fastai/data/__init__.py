"""Data: tables, photos, their cache, splits and near-duplicates, and fastai loaders. Import the submodules."""

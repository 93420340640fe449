"""Layer 7, inference: model folders, bundles, FOODS and the detector a miner runs.

Nothing here imports the training code, scikit-learn or scipy at load time."""

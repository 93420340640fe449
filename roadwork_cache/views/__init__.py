"""Layer 2, views: the 12-view geometry, the variant recipes (aug, natix, tta) and batching of
decoded views in DataLoader workers."""

"""Layer 3, the frozen encoders: DINOv3 presets and weight loading, the MiniLM text encoder."""

"""Layer 1, readers: NATIX parquet shards and image folders become `Sample`s; metadata parsing
and safe image decoding."""

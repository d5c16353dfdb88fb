"""Token tensors: build them from a mix, store them as shards, read them back, batch them."""

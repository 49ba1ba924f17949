"""What a run leaves for people and servers: the work directory, results.json, TensorBoard, charts and the SavedModel export."""

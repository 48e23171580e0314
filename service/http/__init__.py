"""HTTP layer: schemas, error map, controllers."""

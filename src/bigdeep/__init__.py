"""bigdeep: quality-gated, versioned deep learning on data that keeps arriving."""

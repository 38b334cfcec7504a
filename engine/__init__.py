"""SparseMat engine: model, sparsity rules, stream state, image I/O and the command line."""

"""Host-side SparseMat client: numpy, pyzmq and msgpack only (never torch)."""

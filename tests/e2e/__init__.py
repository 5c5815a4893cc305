"""End-to-end tests: real worker processes sharing one LMDB directory with the test process."""

"""Host-side planning: the token table, attention task table and GEMM table of a step."""

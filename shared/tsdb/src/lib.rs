//! Norn's time-series database: XOR chunks, WAL, in-memory head with postings index, and (later) blocks in Prometheus' on-disk format.

//! Load generator, continuous correctness tester and benchmark harness for Norn.

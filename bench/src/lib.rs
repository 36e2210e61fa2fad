//! The nvkv benchmark harness. Filled by issue #4.

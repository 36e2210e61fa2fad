//! Operator tools for nvkv (device set-up, identify, KV shell). Filled by issue #4.

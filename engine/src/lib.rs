//! nvkv: the key-value engine. Being built under issue #3.

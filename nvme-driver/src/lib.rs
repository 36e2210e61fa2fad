//! Userspace NVMe driver (being built).

//! The signed playbook registry: verify → parse strictly → validate → version check.

pub mod model;
pub mod playbook;
pub mod secure_open;
pub mod signature;

//! The signed playbook registry: verify → parse strictly → validate → version check.

pub mod catalog;
pub mod model;
pub mod playbook;
pub mod template;
pub mod when;

//! ACL policy (being written).
